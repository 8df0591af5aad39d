# Ablation: the window start is chosen by a UCB1 bandit over starts 0..3 whose value is the
# measured within-tree leaf-reward variance (every start tried once first; base: random start in
# 0..3). alpha=0.2: a running mean that forgets, as the policy and its variances move.
_base_ = ['../treegrpo_toy_shapes.py']

schedule = dict(_delete_=True, type='AdaptiveWindow', depth=3, k=2, start_range=(0, 3), c=0.5,
                alpha=0.2)
