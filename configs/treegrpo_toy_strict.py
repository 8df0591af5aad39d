# TreeGRPO on the toy task with headroom: every attribute must be right (product reward, base
# model ~0.13, reachable ~1.0). Same generator, prompts, tree and budget as treegrpo_toy_shapes.py;
# the eval also reports the mean-attribute reward of the quick task and JPEG size.
_base_ = ['./treegrpo_toy_shapes.py']

reward = dict(reduction='product')

hooks = [
    dict(type='LoggerHook', interval=1),
    dict(type='EvalHook', interval=100, dataset={{_base_.eval_dataset}}, num_prompts=180, seed=1234,
         extra_rewards=dict(alignment=dict(type='ToyAlignmentReward', reduction='mean'),
                            jpeg=dict(type='JPEGCompressibility', quality=95))),
    dict(type='CheckpointHook', interval=50, max_keep=2),
]
