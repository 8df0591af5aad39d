# TreeGRPO on SD3.5-medium with HPS-v2.1 + CLIPScore (the paper's multi-reward setting): the parts
# are logged as reward/hps and reward/clipscore. CLIPScore with w=1 (clipped cosine), the scale
# the paper normalises with (r_max = 1.0).
_base_ = ['./treegrpo_sd3_hps.py']

reward = dict(
    _delete_=True,
    type='WeightedSum',
    names=['hps', 'clipscore'],
    weights=[1.0, 1.0],
    rewards=[
        {{_base_.reward}},
        dict(type='CLIPScore', model='openai/clip-vit-large-patch14', w=1.0, dtype='bfloat16'),
    ],
)
