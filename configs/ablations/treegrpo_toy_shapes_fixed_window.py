# Ablation: the window always starts at step 0 (base: random start in 0..3).
_base_ = ['../treegrpo_toy_shapes.py']

schedule = dict(_delete_=True, type='FixedWindow', start=0, depth=3, k=2)
