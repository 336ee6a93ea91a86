"""Images <-> latents through the model's VAE, and PIL <-> tensor conversions."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .errors import StudioError

TILED_DECODE_PIXELS = 1024 * 1024  # decode tile by tile above this many output pixels


def pil_to_tensor(image: Image.Image) -> Tensor:
    """RGB PIL image -> (1, 3, H, W) float in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def tensor_to_pils(images: Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] -> list of RGB PIL images (rounded like diffusers)."""
    array = (images.clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in array]


def load_image(path: str) -> Image.Image:
    """Open an image file as RGB or RGBA (see :func:`core.inputs.open_image`, which this calls)."""
    from .inputs import open_image

    return open_image(path)


def fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """Resize an image to exactly (width, height), RGB, with a high-quality filter."""
    image = image.convert("RGB")
    return image if image.size == (width, height) else image.resize((width, height), Image.LANCZOS)


def _latent_scale(vae: Any) -> tuple[float, float]:
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return float(vae.config.scaling_factor), float(shift)


@torch.no_grad()
def encode_image(vae: Any, image: Image.Image, device: torch.device, dtype: torch.dtype,
                 tiled: bool | None = None) -> Tensor:
    """Image -> (1, 4, H/8, W/8) scaled latents (the posterior mean: deterministic).

    ``tiled=None`` encodes tile by tile (diffusers' blended tiles of the VAE's sample size)
    only above TILED_DECODE_PIXELS, as :func:`decode_latents` decodes."""
    pixels = pil_to_tensor(image).to(device=device, dtype=dtype)
    if tiled is None:
        tiled = getattr(vae, "use_tiling", False) or image.width * image.height > TILED_DECODE_PIXELS
    if not tiled:
        mean = vae.encode(pixels).latent_dist.mean
    elif hasattr(vae, "_tiled_encode"):  # diffusers >= 0.33: the moments (mean, log-variance) of blended tiles
        mean = vae._tiled_encode(pixels).chunk(2, dim=1)[0]
    else:
        mean = vae.tiled_encode(pixels).latent_dist.mean
    scale, shift = _latent_scale(vae)
    return (mean - shift) * scale


def decode_latents(vae: Any, latents: Tensor, tiled: bool | None = None) -> Tensor:
    """Scaled latents (B, 4, h, w) -> images (B, 3, H, W) in [0, 1].

    ``tiled=None`` decodes tile by tile only when the output exceeds TILED_DECODE_PIXELS
    (or the model was loaded with VAE tiling): peak memory then stays flat with size.
    """
    scale, shift = _latent_scale(vae)
    z = latents.to(vae.dtype) / scale + shift
    pixels = z.shape[-1] * z.shape[-2] * 64
    if tiled is None:
        tiled = getattr(vae, "use_tiling", False) or pixels > TILED_DECODE_PIXELS
    with torch.no_grad():
        out = vae.tiled_decode(z).sample if tiled else vae.decode(z).sample
    return (out / 2 + 0.5).clamp(0, 1)


def require_multiple_of(value: int, what: str, multiple: int = 8) -> None:
    if value % multiple:
        lo, hi = value - value % multiple, value - value % multiple + multiple
        raise StudioError(f"{what} {value} is not a multiple of {multiple}: use {lo or hi} or {hi}.")
