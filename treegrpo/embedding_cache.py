"""Bounded prompt-embedding cache and precomputed embedding shards.

Text encoders are frozen and a prompt's embedding does not depend on the batch, so embeddings can
be kept between iterations. :class:`EmbeddingCache` keeps at most ``max_entries`` prompts (least
recently used dropped first), each on the CPU, and moves the rows it returns to the device of use.
:class:`EmbeddingStore` reads the safetensors shards written by ``tools/precompute_embeddings.py``
(one row per prompt, read lazily), so a big prompt set needs no text-encoder forwards in training.

Shard folder layout: ``index.json`` = ``{"policy": type, "model_path": ..., "keys": [...],
"prompts": {prompt: [shard file, row]}}`` and ``embeddings-00000.safetensors``, ... each holding
one tensor ``[rows, ...]`` per conditioning key.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch

INDEX_FILE = "index.json"
DEFAULT_CACHE_SIZE = 1024  # prompts; SD3 with T5 in bf16 is ~2.7 MB each: ~2.8 GB of CPU memory

Embedding = dict[str, torch.Tensor]


def same_source(a: str, b: str) -> bool:
    """Two model names / paths name the same model (local paths compared resolved)."""
    paths = [Path(str(x)).expanduser() for x in (a, b)]
    if all(path.exists() for path in paths):
        return paths[0].resolve() == paths[1].resolve()
    return str(a) == str(b)


class EmbeddingStore:
    """Read-only precomputed embeddings of a prompt set (see the module docstring).

    ``policy_type`` / ``model_path``: what the policy using it is; a folder written for another
    model raises ValueError naming both."""

    def __init__(self, directory: str | Path, policy_type: str | None = None, model_path: str | None = None):
        self.directory = Path(directory)
        index_path = self.directory / INDEX_FILE
        if not index_path.is_file():
            raise FileNotFoundError(f"{index_path} does not exist: write it with "
                                    f"`python tools/precompute_embeddings.py CONFIG --out {self.directory}`")
        index = json.loads(index_path.read_text())
        for key, mine in (("policy", policy_type), ("model_path", model_path)):
            if mine is not None and index.get(key) is not None and not same_source(index[key], mine):
                raise ValueError(f"embeddings in {self.directory} were written for {key}={index[key]!r}, "
                                 f"this policy has {key}={mine!r}: precompute them again for this model "
                                 "or remove policy.embedding_dir")
        self.keys: list[str] = list(index["keys"])
        self.rows: dict[str, tuple[str, int]] = {p: (f, int(r)) for p, (f, r) in index["prompts"].items()}
        self._files: dict[str, object] = {}

    def __contains__(self, prompt: str) -> bool:
        return prompt in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, prompt: str) -> Embedding:
        """The stored row of ``prompt``: ``{key: [...]}`` CPU tensors (read from disk now)."""
        from safetensors import safe_open

        name, row = self.rows[prompt]
        if name not in self._files:
            self._files[name] = safe_open(str(self.directory / name), framework="pt", device="cpu")
        handle = self._files[name]
        return {key: handle.get_slice(key)[row : row + 1][0].clone() for key in self.keys}


class EmbeddingCache:
    """LRU cache of per-prompt embeddings on the CPU, at most ``max_entries`` prompts.

    :meth:`encode` returns ``{key: [P, ...]}`` on ``device`` for a list of prompts, calling
    ``encode_fn`` once on the prompts found neither in the cache nor in ``store``. Returned values
    equal ``encode_fn(prompts)`` row for row (the cache only copies)."""

    def __init__(self, max_entries: int = DEFAULT_CACHE_SIZE, store: EmbeddingStore | None = None):
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"embedding_cache_size must be an integer >= 1 (prompts kept), got "
                             f"{max_entries!r}; set policy.cache_prompt_embeds=False to disable the cache")
        self.max_entries, self.store = max_entries, store
        self.entries: OrderedDict[str, Embedding] = OrderedDict()
        self.encoded = 0  # prompts sent through the text encoders (for tests and logs)

    def __len__(self) -> int:
        return len(self.entries)

    def _put(self, prompt: str, value: Embedding) -> None:
        self.entries[prompt] = value
        self.entries.move_to_end(prompt)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)  # least recently used

    def encode(self, prompts: list[str], encode_fn: Callable[[list[str]], Embedding],
               device: torch.device | str | None = None) -> Embedding:
        """prompts (P strings) -> ``{key: [P, ...]}`` on ``device`` (default: the encoder's)."""
        found: dict[str, Embedding] = {}
        missing = []
        for prompt in dict.fromkeys(prompts):
            if prompt in self.entries:
                self.entries.move_to_end(prompt)
                found[prompt] = self.entries[prompt]
            elif self.store is not None and prompt in self.store:
                found[prompt] = self.store.get(prompt)
                self._put(prompt, found[prompt])
            else:
                missing.append(prompt)
        if missing:
            fresh = encode_fn(missing)
            device = fresh[next(iter(fresh))].device if device is None else device
            self.encoded += len(missing)
            for i, prompt in enumerate(missing):
                # a copy (not a view of the batch), so that evicting a prompt frees its memory
                found[prompt] = {key: value[i].detach().to("cpu", copy=True) for key, value in fresh.items()}
                self._put(prompt, found[prompt])
        if not prompts:
            return {}
        keys = found[prompts[0]].keys()
        return {key: torch.stack([found[p][key] for p in prompts]).to(device) for key in keys}
