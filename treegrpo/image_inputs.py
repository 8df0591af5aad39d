"""Input images named by prompt records (edit models): path checks, size caps, safe decoding.

A prompt record's ``image`` field is untrusted text from a prompt file. :func:`resolve_image_path`
turns it into a file inside ``root`` (the prompt file's folder): a relative path that leaves
``root`` (``..``, or a symlink pointing out) is refused, and an absolute path only passes when the
config allows absolute paths. :func:`load_image` reads the file with Pillow after checking its size
on disk, accepts PNG / JPEG / WebP only, and checks the pixel count in the header before decoding,
under both our cap and Pillow's ``Image.MAX_IMAGE_PIXELS``.
"""
from __future__ import annotations

import os
from pathlib import Path

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
DEFAULT_MAX_IMAGE_BYTES = 64 * 1024 * 1024


class ImageInputError(ValueError):
    """A prompt record's input image that cannot be used (the message names the row and the fix)."""


def resolve_image_path(value, root: str | os.PathLike | None, allow_absolute: bool, where: str) -> Path:
    """The record field ``value`` -> a resolved path of an existing regular file.

    Relative paths are read from ``root`` and must stay inside it once symlinks are resolved;
    absolute paths need ``allow_absolute``. ``where`` names the row in error messages."""
    if not isinstance(value, str) or not value.strip():
        raise ImageInputError(f"{where}: 'image' must be a non-empty path string, got {value!r}; "
                              "give the input image's path relative to the prompt file's folder")
    if "\x00" in value:
        raise ImageInputError(f"{where}: 'image' contains a NUL character: fix the prompt file")
    path = Path(value).expanduser() if value.startswith("~") else Path(value)
    if path.is_absolute():
        if not allow_absolute:
            raise ImageInputError(
                f"{where}: image {value!r} is an absolute path, refused: write it relative to the "
                "prompt file's folder, or set policy.allow_absolute_image_paths=True")
        resolved = path.resolve()
    else:
        if root is None:
            raise ImageInputError(f"{where}: image {value!r} is relative but policy.image_root is not "
                                  "set: set it to the prompt file's folder")
        base = Path(root).resolve()
        resolved = (base / path).resolve()
        if not resolved.is_relative_to(base):
            raise ImageInputError(
                f"{where}: image {value!r} resolves to {str(resolved)!r}, outside the image folder "
                f"{str(base)!r} ('..' or a symlink out of it), refused: keep input images inside "
                "that folder, or give an absolute path with policy.allow_absolute_image_paths=True")
    if not resolved.is_file():
        raise ImageInputError(f"{where}: image {value!r} ({str(resolved)!r}) is not an existing file: "
                              "fix the path in the prompt file")
    return resolved


def pixel_cap(max_pixels: int) -> int:
    """The smaller of ``max_pixels`` and Pillow's ``Image.MAX_IMAGE_PIXELS`` (when it is set)."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    return max_pixels if limit is None else min(max_pixels, int(limit))


def load_image(path: Path, where: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
               max_bytes: int = DEFAULT_MAX_IMAGE_BYTES):
    """Read ``path`` as an RGB ``PIL.Image``: at most ``max_bytes`` on disk, PNG / JPEG / WebP,
    at most :func:`pixel_cap` pixels (checked from the header, before decoding)."""
    from PIL import Image, UnidentifiedImageError

    size = path.stat().st_size
    if size > max_bytes:
        raise ImageInputError(f"{where}: image {str(path)!r} has {size} bytes, more than "
                              f"{max_bytes} allowed: shrink it or raise policy.max_image_bytes")
    cap = pixel_cap(max_pixels)
    try:
        with Image.open(path, formats=list(IMAGE_FORMATS)) as image:
            pixels = image.width * image.height
            if pixels > cap:
                raise ImageInputError(
                    f"{where}: image {str(path)!r} is {image.width}x{image.height} ({pixels} pixels), more "
                    f"than {cap} allowed: resize it or raise policy.max_image_pixels (Pillow's "
                    "Image.MAX_IMAGE_PIXELS also caps it)")
            image.load()
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise ImageInputError(f"{where}: {str(path)!r} is not a PNG, JPEG or WebP image: convert it to "
                              "one of those formats") from None
    except Image.DecompressionBombError as error:
        raise ImageInputError(f"{where}: image {str(path)!r} refused by Pillow's pixel limit ({error}): "
                              "resize it") from None
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, ImageInputError):
            raise
        raise ImageInputError(f"{where}: image {str(path)!r} could not be decoded "
                              f"({type(error).__name__}: {str(error)[:200]}): re-export it") from None


def file_key(path: Path) -> str:
    """A cache key that changes when the file is replaced or edited: path, size, mtime."""
    stat = path.stat()
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
