# TreeGRPO on the toy world with a reward registered OUTSIDE the package (plugins/), brought in
# through custom_imports: the pattern for your own rewards.
_base_ = ['./treegrpo_toy_shapes.py']

custom_imports = dict(imports=['plugins.example_reward'], allow_failed_imports=False)
reward = dict(_delete_=True, type='BrightnessReward', target=0.8)
