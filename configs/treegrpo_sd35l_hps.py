# TreeGRPO on SD3.5-large with the HPS-v2.1 reward: the SD3.5-medium recipe (treegrpo_sd3_hps.py)
# on the large model, LoRA r32, bf16. Untested at full size here (no run of it has been made).
#   python tools/train.py configs/treegrpo_sd35l_hps.py
#   python tools/memory_plan.py configs/treegrpo_sd35l_hps.py --gpus 8 --strategy fsdp
# Needs weights/HPS_v2.1_compressed.pt and the SD3.5-large weights (hub id below, or
# --cfg-options policy.model_path=/local/sd3.5-large).
_base_ = ['./treegrpo_sd3_hps.py']

policy = dict(model_path='stabilityai/stable-diffusion-3.5-large')
