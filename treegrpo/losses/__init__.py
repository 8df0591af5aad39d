"""Policy losses."""
from treegrpo.losses.grpo import GRPOClipLoss, grpo_clip_loss

__all__ = ["GRPOClipLoss", "grpo_clip_loss"]
