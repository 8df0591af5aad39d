# Ablation: score rollout t in a background thread while rollout t+1 samples (base: score, then
# sample the next). Every rollout after the first is one update stale (sampled before the update
# on the previous rollout); the PPO ratio uses the log-probs recorded at sampling.
_base_ = ['../treegrpo_toy_shapes.py']

overlap_reward = True
