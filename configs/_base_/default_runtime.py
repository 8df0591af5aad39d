# Runtime defaults shared by every config: seed, optimizer, update loop, hooks.
seed = 0
cpu = False  # True forces CPU even where CUDA exists (CPU is used anyway when there is no GPU)
mixed_precision = 'no'  # 'bf16' on GPUs

optimizer = dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0, eps=1e-8)
lr_warmup_iters = 0

# Policy update per iteration: parents are shuffled, split into `num_minibatches` optimizer steps,
# each accumulated over micro-batches of `micro_batch_size` parents (one forward per parent gives
# the log-probs of all its child edges), repeated for `num_inner_epochs`. `per_step_batches=True`
# recomputes with exactly the sampler's per-step batches instead (exact first ratio on GPUs).
update = dict(num_inner_epochs=1, num_minibatches=1, micro_batch_size=64, max_grad_norm=1.0,
              per_step_batches=False)

loss = dict(type='GRPOClipLoss', clip_range=1e-4, adv_clip_max=5.0, beta=0.0)

hooks = [
    dict(type='LoggerHook', interval=1),
    dict(type='CheckpointHook', interval=50, max_keep=2),
]
