"""The one Gaussian blur of the engine (stroke guidance's painting loss, soft region masks)."""
from __future__ import annotations

import functools
import math

import torch
from torch import Tensor


def kernel_for(sigma: float) -> int:
    """An odd kernel that covers +-3 sigma."""
    return 2 * max(1, int(math.ceil(3 * sigma))) + 1


@functools.lru_cache(maxsize=64)
def blur_matrix(size: int, sigma: float, kernel: int, wrap: bool = False) -> Tensor:
    """(size, size) matrix of a 1-D Gaussian blur with reflect padding: blurred = M @ x.

    Row i holds the normalised taps exp(-d^2 / 2 sigma^2), |d| <= kernel // 2, at the reflected
    indices (kornia's ``gaussian_blur2d`` border); kernel is clipped so one reflection suffices.
    ``wrap``: circular instead (indices modulo ``size``: a 360-degree panorama's columns).
    """
    if not wrap:
        kernel = min(kernel, 2 * size - 1)
    offsets = torch.arange(kernel, dtype=torch.float64) - kernel // 2
    taps = torch.exp(-offsets**2 / (2 * sigma**2))
    taps = taps / taps.sum()
    matrix = torch.zeros(size, size, dtype=torch.float64)
    for i in range(size):
        j = i + offsets.long()
        if wrap:
            j = j % size
        else:
            j = j.abs()
            j = torch.where(j > size - 1, 2 * (size - 1) - j, j)
        matrix[i].index_add_(0, j, taps)
    return matrix


def gaussian_blur(images: Tensor, sigma: float, kernel: int, wrap_columns: bool = False) -> Tensor:
    """Separable Gaussian blur of (B, C, H, W) images as G_H X G_W^T (differentiable; two matmuls
    ran several times faster than depthwise convolutions on the CPU at 64..512 px).
    ``wrap_columns``: the left and right edges meet (a 360-degree panorama)."""
    if kernel <= 1 or sigma <= 0:
        return images
    rows = blur_matrix(images.shape[-2], float(sigma), int(kernel)).to(images)
    cols = blur_matrix(images.shape[-1], float(sigma), int(kernel), bool(wrap_columns)).to(images)
    return rows @ images @ cols.T
