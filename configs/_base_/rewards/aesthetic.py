# LAION aesthetic predictor v2 (MLP on CLIP ViT-L/14 image embeddings; DDPO's aesthetic task).
# Weights: sac+logos+ava1-l14-linearMSE.pth from github.com/christophschuhmann/improved-aesthetic-predictor.
reward = dict(
    type='Aesthetic',
    checkpoint='weights/sac+logos+ava1-l14-linearMSE.pth',
    clip_model='openai/clip-vit-large-patch14',
    dtype='bfloat16',
)
