# The paper's evaluation rewards, for `tools/eval.py CONFIG --rewards hps,image_reward,aesthetic,clipscore`
# (and pickscore). Paths are explicit: download the files named in README "Reward models".
eval_rewards = dict(
    hps=dict(type='HPSv2', version='v2.1', checkpoint='weights/HPS_v2.1_compressed.pt',
             clip_path='laion/CLIP-ViT-H-14-laion2B-s32B-b79K'),
    image_reward=dict(type='ImageReward', checkpoint='weights/ImageReward.pt',
                      tokenizer='google-bert/bert-base-uncased'),
    aesthetic=dict(type='Aesthetic', checkpoint='weights/sac+logos+ava1-l14-linearMSE.pth',
                   clip_model='openai/clip-vit-large-patch14'),
    clipscore=dict(type='CLIPScore', model='openai/clip-vit-large-patch14', w=1.0),
    pickscore=dict(type='PickScore', model='yuvalkirstain/PickScore_v1',
                   tokenizer='laion/CLIP-ViT-H-14-laion2B-s32B-b79K'),
)
