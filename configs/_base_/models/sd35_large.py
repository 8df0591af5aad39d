# Stable Diffusion 3.5 large (flow matching, 8.1B-parameter transformer): the same SD3Policy and
# LoRA targets as SD3.5-medium, only the weights differ. model_path: a hub id or a local diffusers
# folder (no download at run time on machines without internet: pass a local path).
_base_ = ['./sd35_medium.py']

policy = dict(model_path='stabilityai/stable-diffusion-3.5-large')
