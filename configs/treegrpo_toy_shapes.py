# TreeGRPO on the embedded toy world (CPU): the README's main command.
# 16 prompts x one binary tree of depth 3 = 128 leaves, 224 trained edges and 112 parent forwards
# per iteration.
_base_ = [
    './_base_/models/toy_flow.py',
    './_base_/rewards/toy_alignment.py',
    './_base_/samplers/tree.py',
    './_base_/schedules/random_window.py',
    './_base_/default_runtime.py',
]

max_iters = 600
prompts_per_iter = 16
# Full fine-tuning of the 0.77M-parameter denoiser: lr 3e-4 collapses the reward, 1e-4 climbs.
optimizer = dict(lr=1e-4)
update = dict(num_inner_epochs=1, num_minibatches=1, micro_batch_size=64)
# Without the KL term the reward also rises by hacking the classifier with a 2-pixel checkerboard
# (visible in the eval grids from ~100 iterations); beta=0.1 keeps images clean, beta=1 stalls.
policy = dict(keep_reference=True)
loss = dict(clip_range=1e-3, beta=0.1)
# Layout (where and how big the shape is) is decided in the first steps: branch there.
schedule = dict(start_range=(0, 3))

hooks = [
    dict(type='LoggerHook', interval=1),
    # JPEG compressibility (negative kB) watches for reward hacking by high-frequency artefacts.
    dict(type='EvalHook', interval=100, dataset={{_base_.eval_dataset}}, num_prompts=180, seed=1234,
         extra_rewards=dict(jpeg=dict(type='JPEGCompressibility', quality=95))),
    dict(type='CheckpointHook', interval=50, max_keep=2),
]
