# Ablation: the window slides one step every 4 iterations over 0..3 (the official TreeGRPO
# s / tou knobs; base: random start in 0..3).
_base_ = ['../treegrpo_toy_shapes.py']

schedule = dict(_delete_=True, type='SlidingWindow', depth=3, k=2, shift=1, every=4, start_range=(0, 3))
