"""The reward interface and the check every reward output goes through.

A reward maps decoded images ``[L, 3, H, W]`` (float in [0, 1]) and their prompts (``L``
strings) to one float score per image, ``[L]``. A reward that fails must stop the run:
:func:`check_rewards` turns a malformed output into a :class:`RewardError` instead of letting
NaNs or wrong shapes flow into the advantages.

Video policies (Wan) decode each leaf to frames ``[L, F, 3, H, W]`` (float in [0, 1]); video
rewards (:mod:`treegrpo.rewards.video`) take that and check it with :func:`check_videos`.
"""
from __future__ import annotations

import abc
import inspect
from typing import Any, Callable

import torch

MAX_LISTED_INDICES = 10


class RewardError(RuntimeError):
    """A reward model returned something that is not one finite float per image."""


class Reward(abc.ABC):
    """Base class of every reward. Subclasses implement ``__call__``.

    ``__call__(images [L, 3, H, W] float in [0, 1], prompts: list[str] of length L) -> [L]``.
    A reward that needs the prompt records' other fields adds a keyword ``metadata=None`` (a
    list of L dicts, one per image: the record of that image's prompt without ``'prompt'``);
    callers pass it only to rewards whose signature has it (:func:`metadata_caller`).

    ``sends_requests``: True on rewards that may send images or text to a URL (a server, a
    remote detector or judge); the ComfyUI nodes refuse these by class (a workflow could point
    them at any address the server reaches).
    """

    sends_requests: bool = False

    @property
    def name(self) -> str:
        """Name used in logs and error messages (the class name unless overridden)."""
        return type(self).__name__

    @abc.abstractmethod
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """images [L, 3, H, W] float in [0, 1], L prompts -> rewards [L] float."""

    def load(self) -> Any:
        """Load weights now instead of at the first call, so a missing file fails at start-up
        rather than after the first rollout. Default: nothing to load."""
        return self

    def log_values(self) -> dict[str, float]:
        """Extra scalars about the last call for the training log (e.g. each part of a weighted
        sum as ``reward/<name>``); the runner averages them over processes. Default: none."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def load_reward_weights(reward: Any) -> None:
    """Call ``reward.load()`` when the reward has one (plugin rewards need not subclass
    :class:`Reward`), so missing weight files fail before any image is generated."""
    if callable(getattr(reward, "load", None)):
        reward.load()


def check_images(images: Any, prompts: list[str], reward_name: str) -> None:
    """Validate reward inputs: images a [L, 3, H, W] floating tensor and L prompts."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"{reward_name}: images must be a torch.Tensor, got {type(images).__name__}"
        )
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"{reward_name}: images must have shape [L, 3, H, W], got {list(images.shape)}"
        )
    if not images.is_floating_point():
        raise ValueError(
            f"{reward_name}: images must be a float tensor in [0, 1], got dtype {images.dtype}"
        )
    if len(prompts) != images.shape[0]:
        raise ValueError(
            f"{reward_name}: got {images.shape[0]} images but {len(prompts)} prompts"
        )


def check_videos(videos: Any, prompts: list[str], reward_name: str) -> None:
    """Validate video reward inputs: videos a [L, F, 3, H, W] floating tensor and L prompts."""
    if not isinstance(videos, torch.Tensor):
        raise TypeError(f"{reward_name}: videos must be a torch.Tensor, got {type(videos).__name__}")
    if videos.dim() != 5 or videos.shape[2] != 3 or videos.shape[1] < 1:
        raise ValueError(f"{reward_name}: videos must have shape [L, F, 3, H, W] with F >= 1 (a video "
                         f"policy's leaves), got {list(videos.shape)}")
    if not videos.is_floating_point():
        raise ValueError(f"{reward_name}: videos must be a float tensor in [0, 1], got dtype {videos.dtype}")
    if len(prompts) != videos.shape[0]:
        raise ValueError(f"{reward_name}: got {videos.shape[0]} videos but {len(prompts)} prompts")


def _list_indices(indices: list[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:MAX_LISTED_INDICES])
    return shown + (", ..." if len(indices) > MAX_LISTED_INDICES else "")


def check_rewards(rewards: Any, num_images: int, reward_name: str) -> torch.Tensor:
    """Check a reward output and return it as a float32 CPU tensor of shape [num_images].

    Raises :class:`RewardError` naming ``reward_name`` when ``rewards`` is not a tensor, has
    another shape than ``[num_images]``, or holds NaN / inf values (their count and indices).
    """
    if not isinstance(rewards, torch.Tensor):
        raise RewardError(
            f"reward {reward_name!r} returned {type(rewards).__name__}, expected a torch.Tensor "
            f"of shape [{num_images}]"
        )
    if tuple(rewards.shape) != (num_images,):
        raise RewardError(
            f"reward {reward_name!r} returned shape {list(rewards.shape)}, expected "
            f"[{num_images}] (one score per image)"
        )
    if rewards.is_complex():
        raise RewardError(f"reward {reward_name!r} returned complex values ({rewards.dtype})")
    values = rewards.detach().to(device="cpu", dtype=torch.float32)
    nan = torch.nonzero(torch.isnan(values)).flatten().tolist()
    inf = torch.nonzero(torch.isinf(values)).flatten().tolist()
    if nan or inf:
        parts = []
        if nan:
            parts.append(f"{len(nan)} NaN at indices [{_list_indices(nan)}]")
        if inf:
            parts.append(f"{len(inf)} inf at indices [{_list_indices(inf)}]")
        raise RewardError(
            f"reward {reward_name!r} returned non-finite values for {len(nan) + len(inf)} of "
            f"{num_images} images: " + "; ".join(parts)
        )
    return values


# ---------------------------------------------------------------- prompt records (metadata)
MAX_METADATA_BYTES = 64 << 10  # one leaf's metadata as JSON; larger records are refused


def accepts_metadata(reward: Any) -> bool:
    """True when ``reward`` (a callable) takes a ``metadata`` keyword (or ``**kwargs``).

    Decided once from the signature, so a reward written as ``(images, prompts)`` keeps working
    and no call is retried on a TypeError.
    """
    try:
        params = inspect.signature(reward).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: call with two arguments
        return False
    return any((p.name == "metadata" and p.kind != p.POSITIONAL_ONLY) or p.kind == p.VAR_KEYWORD
               for p in params)


def check_metadata(metadata: Any, count: int, reward_name: str) -> list[dict[str, Any]]:
    """Validate ``metadata``: None (-> ``count`` empty dicts) or a list of ``count`` dicts."""
    if metadata is None:
        return [{} for _ in range(count)]
    if not isinstance(metadata, (list, tuple)) or not all(isinstance(m, dict) for m in metadata):
        raise ValueError(f"{reward_name}: metadata must be a list of dicts (one per image), "
                         f"got {type(metadata).__name__}")
    if len(metadata) != count:
        raise ValueError(f"{reward_name}: got {count} images but {len(metadata)} metadata dicts")
    return list(metadata)


def metadata_caller(reward: Any) -> Callable[..., Any]:
    """``call(images, prompts, metadata=None)`` for ``reward``: passes ``metadata`` only when
    the reward's signature accepts it (checked here, once)."""
    if accepts_metadata(reward):
        return lambda images, prompts, metadata=None: reward(images, prompts, metadata=metadata)
    return lambda images, prompts, metadata=None: reward(images, prompts)
