# TreeGRPO on the layout task with a one-step ODE finish: after the SDE window each leaf jumps to
# the image in one Euler step (for a flow model: the decoded x0 prediction) instead of the 4-7
# schedule steps left, so a tree of 8 leaves costs ~23 sampling forwards per prompt instead of ~52.
# The window (the trained edges and their log-probs) is unchanged and evaluation samples the full
# 10 steps. On the base model the within-tree reward differences of the one-step images correlate
# 0.81-0.87 with the full finish's at this config's window starts 0-3 (64 held-out prompts;
# docs/benchmark_layout/finish_agreement, made by tools/finish_agreement.py).
_base_ = ['./treegrpo_toy_layout.py']

sampler = dict(suffix_steps=1)
