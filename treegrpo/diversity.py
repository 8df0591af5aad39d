"""Sample-diversity statistics: does branching shrink diversity? (TreeGRPO's check)

The paper compares the leaves of trees with independent samples by MMD / KID between the two
sets and by the diversity inside each prompt's group. These are the pure functions behind
``tools/diversity.py``:

- :func:`polynomial_kernel` ``k(x, y) = (gamma <x, y> + coef) ** degree``, gamma = 1/D by default
  (the KID kernel of Binkowski et al. 2018, "Demystifying MMD GANs");
- :func:`mmd2_unbiased`, the unbiased estimator of the squared MMD
  ``mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j)``
  (can be slightly negative when the two sets come from the same distribution);
- :func:`kid`, mean and std of the polynomial unbiased MMD^2 over random subsets (clean-fid's
  procedure: each subset draws ``m`` rows of x and ``m`` rows of y without replacement);
- :func:`mean_pairwise_distance`, the mean distance over the pairs i < j of each group;
- :func:`toy_features` / :func:`clip_features`, images [L, 3, H, W] in [0, 1] -> features [L, D].

Everything is computed in float64 (degree-3 kernels of wide features lose digits in float32).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

DISTANCES = ("l2", "cosine")
Kernel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_matrix(name: str, value: torch.Tensor, min_rows: int = 1) -> None:
    if not isinstance(value, torch.Tensor) or value.dim() != 2:
        shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a 2-D tensor [N, D] of feature rows, got {shape}")
    if value.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {list(value.shape)}")


def _check_pair(x: torch.Tensor, y: torch.Tensor, min_rows: int = 1) -> None:
    _check_matrix("x", x, min_rows)
    _check_matrix("y", y, min_rows)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same feature size D, got x {list(x.shape)} "
                         f"and y {list(y.shape)}")


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor, degree: int = 3, gamma: float | None = None,
                      coef: float = 1.0) -> torch.Tensor:
    """Kernel matrix [N, M] (float64) of ``(gamma * x_i . y_j + coef) ** degree``.

    Args:
        x: [N, D] features; y: [M, D] features.
        degree: integer >= 1 (3 for KID); gamma: scale of the dot product (None: 1 / D);
        coef: additive constant (1 for KID).
    """
    _check_pair(x, y)
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise ValueError(f"degree must be an integer >= 1, got degree={degree!r}")
    if gamma is None:
        gamma = 1.0 / x.shape[1]
    return (gamma * (x.double() @ y.double().T) + coef) ** degree


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, kernel: Kernel = polynomial_kernel) -> torch.Tensor:
    """Unbiased squared MMD between the sets x [N, D] and y [M, D] (N, M >= 2): a 0-d float64.

    ``sum_{i != j} k(x_i, x_j) / (N (N - 1)) + sum_{i != j} k(y_i, y_j) / (M (M - 1))
    - 2 sum_{i, j} k(x_i, y_j) / (N M)``; symmetric in x and y, expectation 0 when both sets
    come from the same distribution.
    """
    _check_pair(x, y, min_rows=2)
    n, m = x.shape[0], y.shape[0]
    k_xx, k_yy, k_xy = kernel(x, x).double(), kernel(y, y).double(), kernel(x, y).double()
    xx = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    yy = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return xx + yy - 2 * k_xy.mean()


def kid(x: torch.Tensor, y: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        generator: torch.Generator | None = None, degree: int = 3, gamma: float | None = None,
        coef: float = 1.0) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018) on any features: (mean, std).

    For each of ``subsets`` rounds, ``m = min(N, M, subset_size)`` rows of x [N, D] and m rows of
    y [M, D] are drawn without replacement (``torch.randperm`` with ``generator``), and the
    unbiased MMD^2 with the polynomial kernel (degree, gamma = 1/D, coef) is computed; returns the
    mean and the population std (``correction=0``) of these values. With m = N = M every round
    would see the whole sets (the same value): the MMD^2 of the whole sets is computed once and
    the std is 0 (set ``subset_size`` below N, M for a spread).
    """
    _check_pair(x, y, min_rows=2)
    if isinstance(subsets, bool) or not isinstance(subsets, int) or subsets < 1:
        raise ValueError(f"subsets must be an integer >= 1, got subsets={subsets!r}")
    if isinstance(subset_size, bool) or not isinstance(subset_size, int) or subset_size < 2:
        raise ValueError(f"subset_size must be an integer >= 2, got subset_size={subset_size!r}")
    m = min(x.shape[0], y.shape[0], subset_size)

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return polynomial_kernel(a, b, degree=degree, gamma=gamma, coef=coef)

    if m == x.shape[0] == y.shape[0]:
        return mmd2_unbiased(x, y, kernel).item(), 0.0
    values = []
    for _ in range(subsets):
        rows_x = torch.randperm(x.shape[0], generator=generator)[:m].to(x.device)
        rows_y = torch.randperm(y.shape[0], generator=generator)[:m].to(y.device)
        values.append(mmd2_unbiased(x[rows_x], y[rows_y], kernel))
    stacked = torch.stack(values)
    return stacked.mean().item(), stacked.std(correction=0).item()


def mean_pairwise_distance(features: torch.Tensor, distance: str = "l2") -> torch.Tensor:
    """Within-group diversity: features [G, N, D] (N >= 2) -> [G] float64, the mean over the
    N (N - 1) / 2 pairs i < j of group g of ``|f_i - f_j|_2`` (``distance='l2'``, the default:
    it sees changes of scale as well as of direction) or ``1 - cos(f_i, f_j)`` (``'cosine'``).
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {list(DISTANCES)}, got distance={distance!r}")
    if not isinstance(features, torch.Tensor) or features.dim() != 3:
        shape = list(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features must be a 3-D tensor [G, N, D] (groups, samples, features), got {shape}")
    if features.shape[1] < 2:
        raise ValueError(f"features needs N >= 2 samples per group for pairs, got {list(features.shape)}")
    f = features.double()
    if distance == "l2":
        diff = f.unsqueeze(2) - f.unsqueeze(1)  # [G, N, N, D]
        dist = diff.pow(2).sum(dim=-1).sqrt()
    else:
        unit = F.normalize(f, dim=-1)
        dist = 1.0 - unit @ unit.transpose(1, 2)
    n = f.shape[1]
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=f.device), diagonal=1)
    return dist[:, upper].mean(dim=1)


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor [L, 3, H, W] in [0, 1], got {shape}")


@torch.no_grad()
def toy_features(classifier: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The toy classifier's penultimate features (``ToyClassifier.embed``, before the attribute
    heads): images [L, 3, H, W] in [0, 1] -> [L, hidden] float32 on the images' device."""
    _check_images(images)
    device = next(classifier.parameters()).device
    parts = [classifier.embed(chunk.to(device, torch.float32)).float() for chunk in images.split(batch_size)]
    return torch.cat(parts).to(images.device)


@torch.no_grad()
def clip_features(model, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Projected CLIP image embeddings (not normalised) of a transformers ``CLIPModel``:
    images [L, 3, H, W] in [0, 1] -> [L, projection_dim] float32 on the images' device
    (``clip_preprocess`` to the model's image size, then ``image_embeds``)."""
    from treegrpo.rewards.clip_family import image_embeds
    from treegrpo.rewards.clip_preprocess import clip_preprocess

    _check_images(images)
    param = next(model.parameters())
    size = model.config.vision_config.image_size
    parts = []
    for chunk in images.split(batch_size):
        pixels = clip_preprocess(chunk.to(param.device), size).to(param.dtype)
        parts.append(image_embeds(model, pixels).float())
    return torch.cat(parts).to(images.device)
