# Runtime shared by the configs of real models on GPUs: default_runtime plus bf16 autocast, the
# update recomputed with the sampler's own per-step batches (exact first ratio on GPUs) and the
# paper's evaluation rewards (for tools/eval.py). Replace the prompt file with your training
# prompts (e.g. the HPDv2 training prompts, one per line): train_dataset.path=...
_base_ = ['./default_runtime.py', './rewards/eval_paper.py']

mixed_precision = 'bf16'
train_dataset = dict(type='PromptFile', path='data/prompts.txt')
update = dict(per_step_batches=True)
max_iters = 300
