"""Procedural renderer of the toy world: one anti-aliased shape on a plain background.

Coordinates are fractions of the image side, x to the right and y downwards. Each shape is
drawn from a signed distance ``d`` (negative inside) with a one-pixel linear edge ramp, so
edges are anti-aliased: ``alpha = clamp(0.5 - d * size, 0, 1)``.
"""
from __future__ import annotations

import math

import torch

from treegrpo.toy.prompts import COLOURS, POSITIONS, SHAPES, SIZES, ShapeSpec

COLOUR_RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.20),
    "blue": (0.15, 0.25, 0.90),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.60, 0.20, 0.75),
    "white": (0.95, 0.95, 0.95),
}
POSITION_XY: dict[str, tuple[float, float]] = {
    "left": (0.26, 0.50),
    "right": (0.74, 0.50),
    "top": (0.50, 0.26),
    "bottom": (0.50, 0.74),
    "center": (0.50, 0.50),
}
SIZE_RADIUS: dict[str, float] = {"small": 0.11, "large": 0.20}
SQUARE_HALF_SIDE = math.sqrt(math.pi) / 2  # x radius: same area as the circle
TRIANGLE_CIRCUMRADIUS = 1.4  # x radius
POSITION_JITTER = 0.03  # max shift of the centre (fraction of the side) with a generator
SIZE_JITTER = 0.10  # max relative change of the radius with a generator

_COLOUR_TABLE = torch.tensor([COLOUR_RGB[c] for c in COLOURS])  # [6, 3]
_POSITION_TABLE = torch.tensor([POSITION_XY[p] for p in POSITIONS])  # [5, 2]
_RADIUS_TABLE = torch.tensor([SIZE_RADIUS[s] for s in SIZES])  # [2]


def spec_geometry(
    specs: list[ShapeSpec], generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Specs -> (shape index [B] long, centre x [B], centre y [B], radius [B]) on CPU.

    With a generator the centre moves by up to ``POSITION_JITTER`` and the radius scales by
    up to ``1 +- SIZE_JITTER`` (uniform).
    """
    shape = torch.tensor([SHAPES.index(s.shape) for s in specs], dtype=torch.long)
    xy = _POSITION_TABLE[torch.tensor([POSITIONS.index(s.position) for s in specs], dtype=torch.long)]
    radius = _RADIUS_TABLE[torch.tensor([SIZES.index(s.size) for s in specs], dtype=torch.long)]
    if generator is not None:
        u = torch.rand(len(specs), 3, generator=generator) * 2 - 1  # [B, 3] in [-1, 1)
        xy = xy + POSITION_JITTER * u[:, :2]
        radius = radius * (1 + SIZE_JITTER * u[:, 2])
    return shape, xy[:, 0].clone(), xy[:, 1].clone(), radius


def signed_distance(
    shape: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, radius: torch.Tensor, size: int
) -> torch.Tensor:
    """Signed distance [B, size, size] (fractions of the side, < 0 inside) to each shape.

    shape [B] long indexes ``SHAPES``; cx, cy, radius [B] float. Circle: radius; square:
    equal-area axis-aligned square; triangle: upward equilateral triangle whose bounding box is
    centred on (cx, cy).
    """
    coords = (torch.arange(size, dtype=cx.dtype, device=cx.device) + 0.5) / size
    dx = coords.view(1, 1, size) - cx.view(-1, 1, 1)  # [B, 1, W]
    dy = coords.view(1, size, 1) - cy.view(-1, 1, 1)  # [B, H, 1]
    r = radius.view(-1, 1, 1)
    circle = torch.sqrt(dx * dx + dy * dy) - r
    square = torch.maximum(dx.abs(), dy.abs()) - SQUARE_HALF_SIDE * r
    big_r = TRIANGLE_CIRCUMRADIUS * r
    ty = dy - big_r / 4  # centroid sits a quarter circumradius below the box centre
    sin60 = math.sqrt(3) / 2
    triangle = torch.maximum(
        ty.expand_as(circle), torch.maximum(sin60 * dx - 0.5 * ty, -sin60 * dx - 0.5 * ty)
    ) - big_r / 2
    which = shape.view(-1, 1, 1)
    return torch.where(which == 0, circle, torch.where(which == 1, square, triangle))


def render_specs(
    specs: list[ShapeSpec],
    size: int = 32,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Render specs -> images [B, 3, size, size] float32 in [0, 1] (on ``device``, default CPU).

    Without a generator the output is exact and deterministic; with one, each shape gets a
    small random shift of position and size (the generator is drawn on CPU).
    """
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels, got {size}")
    shape, cx, cy, radius = spec_geometry(specs, generator)
    device = torch.device(device) if device is not None else torch.device("cpu")
    shape, cx, cy, radius = (t.to(device) for t in (shape, cx, cy, radius))
    dist = signed_distance(shape, cx, cy, radius, size)
    alpha = (0.5 - dist * size).clamp(0.0, 1.0).unsqueeze(1)  # [B, 1, H, W]
    table = _COLOUR_TABLE.to(device)
    fg = table[torch.tensor([COLOURS.index(s.colour) for s in specs], device=device)]
    bg = table[torch.tensor([COLOURS.index(s.background) for s in specs], device=device)]
    return bg.view(-1, 3, 1, 1) * (1 - alpha) + fg.view(-1, 3, 1, 1) * alpha
