# Stable Diffusion 1.5 (DDPM-trained UNet, epsilon prediction) with DDIM kernels (DDPO form).
policy = dict(
    type='StableDiffusionPolicy',
    model_path='stable-diffusion-v1-5/stable-diffusion-v1-5',
    resolution=512,
    dtype='bfloat16',
    lora=dict(r=8, alpha=8, target_modules=['to_q', 'to_k', 'to_v', 'to_out.0']),
)
kernel = dict(type='DDIMKernel', eta=1.0, prediction_type='epsilon')
