"""Where the nodes may read files from, and the check that keeps every path inside those folders.

Model folders by kind:
- ``treegrpo`` (configs, run folders, checkpoints, diffusers model folders, reward models), in
  lookup order: ``<ComfyUI>/models/treegrpo`` (inside ComfyUI), the folders of
  ``$TREEGRPO_COMFY_ROOT`` (several separated by ``os.pathsep``), then the ``configs/`` and
  ``work_dirs/`` folders of the treegrpo checkout (editable install). The checkout itself is no
  model folder: its sources, ``.git`` and ``.venv`` are neither listed nor readable (any ``.py``
  there would run as a config). Inside ComfyUI, these folders are registered as the model folder
  "treegrpo" and the lookup uses ComfyUI's list (plus folders others added to it).
- ``loras`` (LoRA files for ComfyUI's MODEL): ComfyUI's standard "loras" folders; outside ComfyUI,
  ``<each $TREEGRPO_COMFY_ROOT folder>/loras``.

A relative name is looked up in each folder in turn. A name may also start with the folder's own
name, so the checkout's ``configs/treegrpo_toy_shapes.py`` and ``work_dirs/<run>`` keep their
usual names. ``..`` that leaves the folder, or an absolute path outside every folder, raises
:class:`PathNotAllowedError`. The check is on the normalised path (as ComfyUI's own
``folder_paths.get_full_path`` does), so a symlink that an administrator placed inside a model
folder is followed.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType

ENV_ROOT = "TREEGRPO_COMFY_ROOT"
FOLDER_NAME = "treegrpo"
KINDS = ("treegrpo", "loras")
CHECKOUT_FOLDERS = ("configs", "work_dirs")  # the only parts of the treegrpo checkout the nodes read
CONFIG_SUFFIXES = (".py", ".json", ".yaml", ".yml")


class PathNotAllowedError(ValueError):
    """A node was given a path outside the configured model folders."""


def package_root() -> Path | None:
    """The treegrpo source tree (the folder holding the ``treegrpo`` package and ``configs/``),
    found without importing treegrpo; None when treegrpo is not installed from a source checkout
    (a wheel install ships no configs, and site-packages is no model folder)."""
    try:
        spec = importlib.util.find_spec("treegrpo")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    root = Path(spec.origin).resolve().parents[1]
    return root if (root / "configs").is_dir() else None


def env_roots() -> list[Path]:
    """The folders of ``$TREEGRPO_COMFY_ROOT`` (``os.pathsep``-separated; empty when unset)."""
    env = os.environ.get(ENV_ROOT, "").strip()
    return [Path(os.path.abspath(p)) for p in env.split(os.pathsep) if p.strip()]


def checkout_folders() -> list[Path]:
    """``configs/`` and ``work_dirs/`` of the treegrpo checkout (empty for a wheel install)."""
    root = package_root()
    return [root / name for name in CHECKOUT_FOLDERS] if root is not None else []


def standalone_roots() -> list[Path]:
    """The "treegrpo" folders besides ComfyUI's ``models/treegrpo``: ``$TREEGRPO_COMFY_ROOT``'s,
    then the checkout's ``configs/`` and ``work_dirs/``."""
    roots: list[Path] = []
    for root in env_roots() + checkout_folders():
        if root not in roots:
            roots.append(root)
    return roots


def comfy_folder_paths() -> ModuleType | None:
    """ComfyUI's ``folder_paths`` module, or None outside ComfyUI."""
    try:
        return importlib.import_module("folder_paths")
    except ImportError:
        return None


def register_comfy_folders(folder_paths: ModuleType | None = None) -> list[str]:
    """Register the "treegrpo" model folder with ComfyUI: ``<models_dir>/treegrpo`` first (the
    default, e.g. for downloads), then the standalone roots. No-op outside ComfyUI. Returns the
    folders now listed under "treegrpo"."""
    folder_paths = folder_paths if folder_paths is not None else comfy_folder_paths()
    if folder_paths is None:
        return []
    wanted = [os.path.join(folder_paths.models_dir, FOLDER_NAME)] + [str(p) for p in standalone_roots()]
    try:
        present = folder_paths.get_folder_paths(FOLDER_NAME)
    except KeyError:
        present = []
    for index, folder in enumerate(wanted):
        if folder in present:
            continue
        try:
            folder_paths.add_model_folder_path(FOLDER_NAME, folder, is_default=index == 0)
        except TypeError:  # ComfyUI before is_default (September 2024): appended instead
            folder_paths.add_model_folder_path(FOLDER_NAME, folder)
        present.append(folder)
    return folder_paths.get_folder_paths(FOLDER_NAME)


def model_roots(kind: str) -> list[Path]:
    """The folders a path of ``kind`` ('treegrpo' or 'loras') may come from, in lookup order."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    folder_paths = comfy_folder_paths()
    if folder_paths is not None:
        try:
            return [Path(os.path.abspath(p)) for p in folder_paths.get_folder_paths(kind)]
        except KeyError:
            return []
    return [root / "loras" for root in env_roots()] if kind == "loras" else standalone_roots()


def is_inside(path: str | Path, root: str | Path) -> bool:
    """True when the normalised ``path`` is ``root`` or below it."""
    path, root = os.path.abspath(path), os.path.abspath(root)
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives on Windows
        return False


def resolve_path(name: str, kind: str = "treegrpo") -> Path:
    """The existing file or folder ``name`` names inside the ``kind`` model folders.

    ``name`` is relative to a model folder (tried in order; it may start with the folder's own
    name, e.g. ``configs/x.py`` in ``<checkout>/configs``) or absolute inside one of them.
    Raises PathNotAllowedError for anything that would leave the folders, FileNotFoundError when
    no folder holds it.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"expected a path inside the {kind} model folders, got {name!r}")
    name = name.strip()
    roots = model_roots(kind)
    if not roots:
        raise FileNotFoundError(
            f"no {kind} model folder is configured: run inside ComfyUI (models/{kind}) or set "
            f"{ENV_ROOT} to a folder"
        )
    shown = ", ".join(str(r) for r in roots)
    if os.path.isabs(name):
        path = Path(os.path.normpath(name))
        if not any(is_inside(path, root) for root in roots):
            raise PathNotAllowedError(
                f"{name!r} is outside the {kind} model folders ({shown}); put the file there and "
                "give its path relative to that folder"
            )
        if path.exists():
            return path
    else:
        for root in roots:
            path = Path(os.path.normpath(os.path.join(root, name)))
            if not is_inside(path, root):
                raise PathNotAllowedError(
                    f"{name!r} leaves the {kind} model folder {root} ('..' is not allowed out of "
                    "the model folders)"
                )
            if path.exists():
                return path
            if Path(name).parts[0] == root.name:  # 'configs/x.py' in <checkout>/configs
                path = Path(os.path.normpath(os.path.join(root.parent, name)))
                if is_inside(path, root) and path.exists():
                    return path
    raise FileNotFoundError(f"{name!r} not found in the {kind} model folders ({shown})")


def resolve_config(name: str) -> Path:
    """A config file (``.py``, ``.json``, ``.yaml``) inside the treegrpo model folders: the only
    place a config (whose Python mmengine executes) is read from."""
    path = resolve_path(name, "treegrpo")
    if not path.is_file() or path.suffix not in CONFIG_SUFFIXES:
        raise ValueError(f"config {path} is not a config file (a {'/'.join(CONFIG_SUFFIXES)} file)")
    return path


def require_safetensors(path: Path) -> Path:
    """Refuse weight files in any other format than safetensors (pickles can run code)."""
    if path.suffix != ".safetensors":
        raise PathNotAllowedError(
            f"{path.name}: weights load from .safetensors files only (got {path.suffix or 'no suffix'!r})"
        )
    return path


def check_model_folder(path: Path) -> Path:
    """A diffusers model folder must hold its weights as safetensors: refuse one whose component
    folders have only pickle weights (.bin / .pt / .ckpt / .pth)."""
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a diffusers model folder (expected model_index.json)")
    for folder in [path, *(p for p in path.iterdir() if p.is_dir())]:
        files = [f.suffix for f in folder.iterdir() if f.is_file()]
        pickles = [s for s in files if s in (".bin", ".pt", ".ckpt", ".pth", ".pkl")]
        if pickles and ".safetensors" not in files:
            raise PathNotAllowedError(
                f"{folder} holds weights as {sorted(set(pickles))} only; treegrpo loads safetensors "
                "weights only (convert them, e.g. save_pretrained(..., safe_serialization=True))"
            )
    return path


def list_files(kind: str, suffix: str = ".safetensors") -> list[str]:
    """Names (relative, '/'-separated) of the ``suffix`` files in the ``kind`` folders, for combos."""
    folder_paths = comfy_folder_paths()
    if folder_paths is not None:
        try:
            return [n for n in folder_paths.get_filename_list(kind) if n.endswith(suffix)]
        except KeyError:
            return []
    names: set[str] = set()
    for root in model_roots(kind):
        if root.is_dir():
            names.update(p.relative_to(root).as_posix() for p in root.rglob(f"*{suffix}") if p.is_file())
    return sorted(names)
