# Ablation: backup weighted by the softmax of summed log-probs (near one-hot; base: mean log-probs).
_base_ = ['../treegrpo_toy_shapes.py']

advantage = dict(weighting='sum')
