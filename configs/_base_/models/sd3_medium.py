# Stable Diffusion 3 medium: the SD3.5 base with another checkpoint.
_base_ = ['./sd35_medium.py']
policy = dict(model_path='stabilityai/stable-diffusion-3-medium-diffusers')
