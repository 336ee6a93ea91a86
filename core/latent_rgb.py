"""A linear latent -> RGB map fitted to a model's own VAE (for previews and fast guidance).

SD's latents are close to a linear function of the low-passed image (per latent pixel,
RGB ~ A z + b). We fit A (3x4) and b by least squares on images the VAE itself encodes
and decodes, so the map matches whatever VAE is loaded, the bundled one included.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

_FITS: "weakref.WeakKeyDictionary[Any, tuple[Tensor, Tensor]]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def colour_fields(count: int, size: int, seed: int) -> Tensor:
    """Smooth random colour fields and flat patches in [-1, 1]: (count, 3, size, size)."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        coarse = rng.uniform(-1, 1, size=(3, 4, 4)).astype(np.float32)
        if i % 3 == 0:
            coarse[:] = rng.uniform(-1, 1, size=(3, 1, 1))
        images.append(torch.nn.functional.interpolate(torch.from_numpy(coarse)[None], size=(size, size),
                                                      mode="bicubic", align_corners=False)[0].clamp(-1, 1))
    return torch.stack(images)


NOISE_LEVELS = (0.5, 0.1, 0.0)  # abar of the noised fitting latents (0: pure noise)


@torch.no_grad()
def fit_latent_to_rgb(vae: Any, count: int = 12, size: int = 64, seed: int = 0,
                      noise_levels: Sequence[float] = NOISE_LEVELS) -> tuple[Tensor, Tensor]:
    """Least-squares (A, b) with RGB in [0,1] ~ A @ z + b per latent pixel (z scaled latents).

    Targets are the VAE's own decodings, average-pooled to latent resolution, so the
    map inverts the decoder as seen at that scale. Besides the encoded latents z, the fit
    sees noised ones, sqrt(abar) z + sqrt(1 - abar) n with abar in ``noise_levels`` (image i
    at level i mod L), decoded by the same VAE: previews and fast stroke guidance evaluate
    the map on noisy latents, where a fit to clean latents alone can be far off (on a VAE
    whose scaled latents are not unit-variance).
    """
    param = next(vae.parameters())
    images = colour_fields(count, size, seed).to(param.device, param.dtype)
    scale = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    z = (vae.encode(images).latent_dist.mean.float() - shift) * scale
    generator = torch.Generator("cpu").manual_seed(seed)
    noised = []
    for i, abar in enumerate(noise_levels):  # q(z_t | z), DDPM eq. 4
        clean = z[i::len(noise_levels)]
        noise = torch.randn(clean.shape, generator=generator).to(z.device)
        noised.append(abar**0.5 * clean + (1 - abar) ** 0.5 * noise)
    z = torch.cat([z, *noised])
    decoded = (vae.decode((z / scale + shift).to(param.dtype)).sample / 2 + 0.5).clamp(0, 1)
    factor = size // z.shape[-1]
    target = torch.nn.functional.avg_pool2d(decoded.float(), factor)  # (B, 3, h, w)
    zs = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    design = torch.cat([zs, torch.ones(len(zs), 1, device=zs.device)], dim=1).double()
    rgb = target.permute(0, 2, 3, 1).reshape(-1, 3).double()
    solution = torch.linalg.lstsq(design.cpu(), rgb.cpu()).solution  # (C + 1, 3)
    return solution[:-1].T.float(), solution[-1].float()


def latent_rgb_map(vae: Any) -> tuple[Tensor, Tensor]:
    """The fitted (A, b) for this VAE, computed once per loaded VAE."""
    with _LOCK:
        if vae not in _FITS:
            _FITS[vae] = fit_latent_to_rgb(vae)
        return _FITS[vae]


def latents_to_rgb(latents: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """(B, C, h, w) scaled latents -> (B, 3, h, w) approximate RGB in [0, 1] (differentiable)."""
    weight = weight.to(latents.device, latents.dtype)
    bias = bias.to(latents.device, latents.dtype)
    return (torch.einsum("rc,bchw->brhw", weight, latents) + bias[None, :, None, None]).clamp(0, 1)


def preview_image(vae: Any, latents: Tensor, upscale: int = 4) -> Image.Image:
    """A cheap preview of latents[0] as a PIL image, ``upscale`` x the latent size."""
    weight, bias = latent_rgb_map(vae)
    rgb = latents_to_rgb(latents[:1].float(), weight, bias)[0]
    array = (rgb.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(array)
    return image.resize((image.width * upscale, image.height * upscale), Image.BILINEAR)
