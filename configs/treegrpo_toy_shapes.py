# TreeGRPO on the embedded toy world (CPU): the README's main command.
# 8 prompts x one binary tree of depth 3 = 64 leaves per iteration.
_base_ = [
    './_base_/models/toy_flow.py',
    './_base_/rewards/toy_alignment.py',
    './_base_/samplers/tree.py',
    './_base_/schedules/random_window.py',
    './_base_/default_runtime.py',
]

max_iters = 150
prompts_per_iter = 8
optimizer = dict(lr=3e-4)
update = dict(num_inner_epochs=1, num_minibatches=1, micro_batch_size=64)
loss = dict(clip_range=1e-3)

hooks = [
    dict(type='LoggerHook', interval=1),
    dict(type='EvalHook', interval=25, dataset={{_base_.eval_dataset}}, num_prompts=64, seed=1234),
    dict(type='CheckpointHook', interval=50, max_keep=2),
]
