"""Generator wrappers behind one interface (:class:`Policy`)."""
from .base import Policy
from .flux import FluxPolicy
from .flux_kontext import FluxKontextPolicy
from .qwen_image import QwenImagePolicy
from .sd3 import SD3Policy
from .stable_diffusion import StableDiffusionPolicy
from .toy import ToyFlowPolicy
from .wan import WanPolicy

__all__ = ["FluxKontextPolicy", "FluxPolicy", "Policy", "QwenImagePolicy", "SD3Policy", "StableDiffusionPolicy", "ToyFlowPolicy",
           "WanPolicy"]
