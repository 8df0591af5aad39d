# The embedded toy world: a tiny text-conditional flow-matching generator on 3x32x32 pixels,
# shipped in treegrpo/toy/weights (made by tools/pretrain_toy.py).
policy = dict(type='ToyFlowPolicy', weights=None, sigma_shift=1.0)
kernel = dict(type='FlowMatchingKernel', eta=0.7)
train_dataset = dict(type='ToyShapesPrompts', num_prompts=2000, seed=0, split='train')
eval_dataset = dict(type='ToyShapesPrompts', num_prompts=180, seed=0, split='eval')  # the whole eval split
