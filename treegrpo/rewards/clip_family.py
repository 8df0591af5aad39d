"""CLIP-family rewards on one backend: transformers' ``CLIPModel`` + torch preprocessing.

=============  =========================================================================  ==========
reward         score per image                                                            weights
=============  =========================================================================  ==========
``HPSv2``      ``cos(img, txt)`` (hpsv2 ``img_score``: no logit scale)                     HPS .pt
``PickScore``  ``exp(logit_scale) * cos(img, txt)`` (PickScore README; about 20 - 23)      hub folder
``CLIPScore``  ``w * max(cos(img, txt), 0)``, w = 2.5 (Hessel et al. 2021)                 hub folder
``Aesthetic``  ``MLP(img / |img|)`` on CLIP ViT-L/14 image embeddings (LAION, 1 - 10)      .pth + hub
=============  =========================================================================  ==========

``img`` / ``txt`` are the projected CLIP embeddings; texts are tokenised with a transformers
CLIP tokenizer (OpenAI BPE, 77 tokens) and pooled at the first end-of-text token.

Each reward prepares its inputs as its official implementation does:

- ``HPSv2`` (hpsv2, its bundled open_clip): images letterboxed (longest side to 224, black
  padding; :func:`~treegrpo.rewards.clip_preprocess.letterbox_preprocess`); texts cleaned as
  open_clip does (ftfy, HTML unescape, whitespace; :mod:`treegrpo.rewards.clip_text`).
- ``PickScore`` (its README: transformers ``CLIPProcessor``): shortest side to 224, centre crop
  with a floored offset (``CLIPImageProcessor``); texts as the fast tokenizer takes them (no ftfy).
- ``CLIPScore`` (Hessel et al.'s code: OpenAI ``clip.load`` / ``clip.tokenize``): shortest side
  to 224, centre crop with a rounded offset (torchvision); texts cleaned as OpenAI CLIP does.
- ``Aesthetic`` (improved-aesthetic-predictor: OpenAI ``clip.load('ViT-L/14')``): as CLIPScore's
  images; no text.

Every reward: ``reward(images [L, 3, H, W] in [0, 1], prompts) -> [L]`` float32 **on the
images' device**; models load on the first call (or ``reward.load()``), run under
``torch.no_grad`` in chunks of ``batch_size`` on ``device`` (None: the images' device) in
``dtype``. A missing weight raises ``FileNotFoundError`` naming the file, where to get it and
the config key to set.
"""
from __future__ import annotations

import abc
import importlib.util
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from treegrpo.registry import REWARDS
from treegrpo.rewards.base import Reward, check_images
from treegrpo.rewards.clip_convert import (aesthetic_mlp_from_state_dict, clip_model_from_open_clip,
                                           load_torch_state_dict)
from treegrpo.rewards.clip_preprocess import clip_preprocess, letterbox_preprocess
from treegrpo.rewards.clip_text import clean_clip_text, require_ftfy

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LAION_VIT_H = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
OPENAI_VIT_L = "openai/clip-vit-large-patch14"
HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
HPS_BACKENDS = ("transformers", "official")
AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_URL = "https://github.com/christophschuhmann/improved-aesthetic-predictor"


def _from_pretrained(loader: Any, path: str | Path, key: str, what: str) -> Any:
    """``loader.from_pretrained(path)`` for a local folder or a hub id; a FileNotFoundError that
    names ``path``, the config ``key`` and how to download it otherwise."""
    local = Path(str(path)).expanduser()
    if local.exists():
        return loader.from_pretrained(str(local))
    if not HUB_ID.match(str(path)):
        raise FileNotFoundError(f"{what}: no folder {str(path)!r}; set the reward's {key!r} to a "
                                f"local folder or a Hugging Face hub id")
    try:
        return loader.from_pretrained(str(path))
    except OSError as error:
        raise FileNotFoundError(
            f"{what}: could not load hub id {str(path)!r} (not cached and the hub unreachable?). "
            f"Download it with `huggingface-cli download {path} --local-dir <dir>` and set the "
            f"reward's {key!r} to <dir>") from error


def load_clip_model(path: str | Path, key: str = "model"):
    """A ``transformers.CLIPModel`` (eval) from a local folder or hub id (see _from_pretrained)."""
    from transformers import CLIPModel

    return _from_pretrained(CLIPModel, path, key, "CLIP model").eval()


def load_clip_tokenizer(path: str | Path, key: str = "tokenizer"):
    """A transformers CLIP tokenizer from a local folder or hub id."""
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, path, key, "CLIP tokenizer")


def image_embeds(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """[B, 3, S, S] pixel values -> [B, D] projected image embeddings (not normalised)."""
    pooled = model.vision_model(pixel_values=pixel_values).pooler_output
    return model.visual_projection(pooled)


def text_embeds(model, input_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] token ids -> [B, D] projected text embeddings (not normalised)."""
    pooled = model.text_model(input_ids=input_ids).pooler_output
    return model.text_projection(pooled)


def tokenize(tokenizer, prompts: list[str], max_length: int) -> torch.Tensor:
    """Prompts -> [B, max_length] ids, truncated and padded to ``max_length`` (as open_clip)."""
    return tokenizer(list(prompts), padding="max_length", truncation=True, max_length=max_length,
                     return_tensors="pt").input_ids


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of [B, D] and [B, D] -> [B] float32."""
    return (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(dim=-1)


def _missing(what: str, path: Any, filename: str, source: str, key: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} checkpoint not found: {path!r}. Download {filename} from {source} and set the "
        f"reward's {key!r} to its path (e.g. --cfg-options reward.{key}=weights/{filename})")


class CLIPFamilyReward(Reward):
    """Shared machinery: validation, lazy loading, device placement and chunked scoring.

    Subclasses implement ``_load()``, ``_modules()`` and ``_score(images, prompts) -> [b]``.
    """

    crop_rounding = "round"  # torchvision CenterCrop (open_clip, OpenAI clip)
    clean_text = False  # True: clean prompts as OpenAI CLIP / open_clip do (clip_text.py)

    def __init__(self, device: str | torch.device | None = None,
                 dtype: str | torch.dtype = "float32", batch_size: int = 16) -> None:
        self.device = None if device is None else torch.device(device)
        names = {v: k for k, v in DTYPES.items()}
        if isinstance(dtype, torch.dtype) and dtype in names:
            dtype = names[dtype]
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.dtype_name, self.dtype = dtype, DTYPES[dtype]
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self._loaded = False
        self._placed_on: torch.device | None = None

    @abc.abstractmethod
    def _load(self) -> None:
        """Load the weights (float32 on CPU, then cast to ``self.dtype``)."""

    @abc.abstractmethod
    def _modules(self) -> list[torch.nn.Module]:
        """The loaded modules to move to the scoring device."""

    @abc.abstractmethod
    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """One chunk: images [b, 3, H, W] on the scoring device -> [b] scores."""

    def load(self) -> "CLIPFamilyReward":
        """Load the models now (they load on the first call otherwise); returns self."""
        if not self._loaded:
            if self.clean_text:
                require_ftfy()
            self._load()
            for module in self._modules():
                module.requires_grad_(False).eval()
            self._loaded = True
        return self

    def _place(self, device: torch.device) -> None:
        if self._placed_on != device:
            for module in self._modules():
                module.to(device)
            self._placed_on = device

    def _pixels(self, images: torch.Tensor, model) -> torch.Tensor:
        size = model.config.vision_config.image_size
        return clip_preprocess(images, size, crop_rounding=self.crop_rounding).to(self.dtype)

    def _ids(self, prompts: list[str], model, tokenizer) -> torch.Tensor:
        if self.clean_text:
            prompts = [clean_clip_text(p) for p in prompts]
        ids = tokenize(tokenizer, prompts, model.config.text_config.max_position_embeddings)
        return ids.to(model.device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """images [L, 3, H, W] in [0, 1], L prompts -> [L] float32 on the images' device."""
        check_images(images, prompts, self.name)
        self.load()
        device = self.device if self.device is not None else images.device
        self._place(device)
        chunks = [self._score(images[start:start + self.batch_size].to(device),
                              list(prompts[start:start + self.batch_size])).float()
                  for start in range(0, images.shape[0], self.batch_size)]
        if not chunks:
            return torch.zeros(0, dtype=torch.float32, device=images.device)
        return torch.cat(chunks).to(images.device)

    def _common_repr(self) -> str:
        device = None if self.device is None else str(self.device)
        return f"device={device!r}, dtype={self.dtype_name!r}, batch_size={self.batch_size}"


@REWARDS.register_module()
class HPSv2(CLIPFamilyReward):
    """Human Preference Score v2 / v2.1 (Wu et al. 2023): cosine of the HPS-tuned ViT-H-14.

    Args:
        checkpoint: ``HPS_v2.1_compressed.pt`` / ``HPS_v2_compressed.pt`` (hub repo
            ``xswu/HPSv2``), converted on load, or a folder written by
            ``python -m treegrpo.rewards.clip_convert`` (transformers layout).
        version: ``'v2.0'`` or ``'v2.1'`` (names the expected file; the weights decide).
        clip_path: folder or hub id of the tokenizer (``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``;
            any OpenAI-BPE CLIP tokenizer gives the same ids).
        backend: ``'transformers'`` (ours) or ``'official'`` (the ``hpsv2`` package, PIL
            preprocessing; extra ``rewards-official``).
        vision_heads, text_heads: attention heads (None: 16 and 16 for ViT-H-14, see clip_convert).
    """

    clean_text = True  # open_clip's tokenizer: ftfy + HTML unescape + whitespace

    def __init__(self, checkpoint: str | Path | None = None, version: str = "v2.1",
                 clip_path: str | Path = LAION_VIT_H, backend: str = "transformers",
                 vision_heads: int | None = None, text_heads: int | None = None,
                 device: str | torch.device | None = None, dtype: str | torch.dtype = "float32",
                 batch_size: int = 16) -> None:
        super().__init__(device, dtype, batch_size)
        if version not in HPS_FILES:
            raise ValueError(f"version must be one of {sorted(HPS_FILES)}, got {version!r}")
        if backend not in HPS_BACKENDS:
            raise ValueError(f"backend must be one of {HPS_BACKENDS}, got {backend!r}")
        if backend == "official" and importlib.util.find_spec("hpsv2") is None:
            raise ImportError("HPSv2(backend='official') needs the hpsv2 package: "
                              "pip install 'treegrpo[rewards-official]' (or use backend='transformers')")
        self.checkpoint, self.version, self.clip_path = checkpoint, version, clip_path
        self.backend, self.vision_heads, self.text_heads = backend, vision_heads, text_heads

    def _checkpoint_path(self) -> Path:
        path = None if self.checkpoint is None else Path(str(self.checkpoint)).expanduser()
        if path is None or not path.exists():
            raise _missing("HPSv2", self.checkpoint, HPS_FILES[self.version],
                           "the Hugging Face hub repo xswu/HPSv2", "checkpoint")
        return path

    def _load(self) -> None:
        path = self._checkpoint_path()
        if self.backend == "official":
            self._load_official(path)
            return
        if path.is_dir():
            model = load_clip_model(path, "checkpoint")
        else:
            model = clip_model_from_open_clip(load_torch_state_dict(path), self.vision_heads,
                                              self.text_heads)
        self.model = model.to(self.dtype)
        self.tokenizer = load_clip_tokenizer(self.clip_path, "clip_path")

    def _load_official(self, path: Path) -> None:
        from hpsv2.src.open_clip import create_model_and_transforms, get_tokenizer

        # pretrained=None: no download of the LAION weights, which the checkpoint overwrites.
        model, _, preprocess = create_model_and_transforms(
            "ViT-H-14", None, precision="fp32", device="cpu", jit=False, force_quick_gelu=False,
            force_custom_text=False, force_patch_dropout=False, force_image_size=None,
            pretrained_image=False, image_mean=None, image_std=None, light_augmentation=True,
            aug_cfg={}, output_dict=True, with_score_predictor=False, with_region_predictor=False)
        model.load_state_dict(load_torch_state_dict(path))
        self.model, self.preprocess = model.to(self.dtype), preprocess
        self.tokenizer = get_tokenizer("ViT-H-14")

    def _modules(self) -> list[torch.nn.Module]:
        return [self.model]

    def _pixels(self, images: torch.Tensor, model) -> torch.Tensor:
        """hpsv2 letterboxes (longest side to the model's size, black padding), it does not crop."""
        size = model.config.vision_config.image_size
        return letterbox_preprocess(images, size).to(self.dtype)

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if self.backend == "official":
            return self._score_official(images, prompts)
        pixels = self._pixels(images, self.model)
        ids = self._ids(prompts, self.model, self.tokenizer)
        return cosine(image_embeds(self.model, pixels), text_embeds(self.model, ids))

    def _score_official(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        from PIL import Image

        from treegrpo.rewards.image_stats import to_uint8

        pixels = torch.stack([self.preprocess(Image.fromarray(a)) for a in to_uint8(images).numpy()])
        out = self.model(pixels.to(images.device, self.dtype), self.tokenizer(prompts).to(images.device))
        return (out["image_features"].float() * out["text_features"].float()).sum(dim=-1)

    def __repr__(self) -> str:
        return (f"HPSv2(checkpoint={str(self.checkpoint)!r}, version={self.version!r}, "
                f"backend={self.backend!r}, {self._common_repr()})")


@REWARDS.register_module()
class PickScore(CLIPFamilyReward):
    """PickScore v1 (Kirstain et al. 2023): ``exp(logit_scale) * cos`` of a tuned CLIP-H.

    Args:
        model: folder or hub id of the transformers model (``yuvalkirstain/PickScore_v1``).
        tokenizer: folder or hub id of the tokenizer (the README's processor,
            ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``; the model repo has no tokenizer).
    """

    crop_rounding = "floor"  # CLIPImageProcessor, as in the PickScore README
    clean_text = False  # the README's CLIPProcessor: the fast tokenizer, no ftfy

    def __init__(self, model: str | Path = "yuvalkirstain/PickScore_v1",
                 tokenizer: str | Path = LAION_VIT_H, device: str | torch.device | None = None,
                 dtype: str | torch.dtype = "float32", batch_size: int = 16) -> None:
        super().__init__(device, dtype, batch_size)
        self.model_path, self.tokenizer_path = model, tokenizer

    def _load(self) -> None:
        self.model = load_clip_model(self.model_path, "model").to(self.dtype)
        self.tokenizer = load_clip_tokenizer(self.tokenizer_path, "tokenizer")

    def _modules(self) -> list[torch.nn.Module]:
        return [self.model]

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        pixels = self._pixels(images, self.model)
        ids = self._ids(prompts, self.model, self.tokenizer)
        cos = cosine(image_embeds(self.model, pixels), text_embeds(self.model, ids))
        return self.model.logit_scale.float().exp() * cos

    def __repr__(self) -> str:
        return f"PickScore(model={str(self.model_path)!r}, {self._common_repr()})"


@REWARDS.register_module()
class CLIPScore(CLIPFamilyReward):
    """CLIPScore (Hessel et al. 2021): ``w * max(cos(img, txt), 0)``, in [0, w].

    The paper uses ``w = 2.5``, CLIP ViT-B/32 and the prefix ``'A photo depicts'`` before each
    caption; here the model defaults to ViT-L/14 and the prefix to none (``prefix`` adds it,
    followed by a space). ``w = 1`` gives the clipped cosine itself.
    """

    clean_text = True  # OpenAI clip.tokenize: ftfy + HTML unescape + whitespace

    def __init__(self, model: str | Path = OPENAI_VIT_L, tokenizer: str | Path | None = None,
                 w: float = 2.5, prefix: str = "", device: str | torch.device | None = None,
                 dtype: str | torch.dtype = "float32", batch_size: int = 16) -> None:
        super().__init__(device, dtype, batch_size)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w <= 0:
            raise ValueError(f"w must be a positive number, got {w!r}")
        self.model_path, self.tokenizer_path, self.w, self.prefix = model, tokenizer, float(w), prefix

    def _load(self) -> None:
        self.model = load_clip_model(self.model_path, "model").to(self.dtype)
        if self.tokenizer_path is None:
            self.tokenizer = load_clip_tokenizer(self.model_path, "model")
        else:
            self.tokenizer = load_clip_tokenizer(self.tokenizer_path, "tokenizer")

    def _modules(self) -> list[torch.nn.Module]:
        return [self.model]

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        texts = [f"{self.prefix} {p}" if self.prefix else p for p in prompts]
        pixels = self._pixels(images, self.model)
        ids = self._ids(texts, self.model, self.tokenizer)
        cos = cosine(image_embeds(self.model, pixels), text_embeds(self.model, ids))
        return self.w * cos.clamp(min=0.0)

    def __repr__(self) -> str:
        return f"CLIPScore(model={str(self.model_path)!r}, w={self.w}, {self._common_repr()})"


@REWARDS.register_module()
class Aesthetic(CLIPFamilyReward):
    """LAION aesthetic predictor v2 (improved-aesthetic-predictor): a linear MLP on the
    L2-normalised CLIP ViT-L/14 image embedding; scores roughly 1 - 10. Prompts are ignored.

    Args:
        checkpoint: ``sac+logos+ava1-l14-linearMSE.pth`` (improved-aesthetic-predictor repo).
        clip_model: folder or hub id of the CLIP model (``openai/clip-vit-large-patch14``).
    """

    def __init__(self, checkpoint: str | Path | None = None, clip_model: str | Path = OPENAI_VIT_L,
                 device: str | torch.device | None = None, dtype: str | torch.dtype = "float32",
                 batch_size: int = 16) -> None:
        super().__init__(device, dtype, batch_size)
        self.checkpoint, self.clip_model = checkpoint, clip_model

    def _load(self) -> None:
        path = None if self.checkpoint is None else Path(str(self.checkpoint)).expanduser()
        if path is None or not path.is_file():
            raise _missing("Aesthetic", self.checkpoint, AESTHETIC_FILE, AESTHETIC_URL, "checkpoint")
        self.mlp = aesthetic_mlp_from_state_dict(load_torch_state_dict(path))  # float32 always
        self.model = load_clip_model(self.clip_model, "clip_model").to(self.dtype)

    def _modules(self) -> list[torch.nn.Module]:
        return [self.model, self.mlp]

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        embeds = image_embeds(self.model, self._pixels(images, self.model)).float()
        return self.mlp(F.normalize(embeds, dim=-1)).squeeze(-1)

    def __repr__(self) -> str:
        return (f"Aesthetic(checkpoint={str(self.checkpoint)!r}, clip_model={str(self.clip_model)!r}, "
                f"{self._common_repr()})")
