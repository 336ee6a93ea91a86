"""The data term of the GradOP objective: the painting function f, the renderers, the loss and its optimiser.

    L(z) = MSE_m(f(R(z)), y),   f = Gaussian blur (kernel 35, sigma 7 at 512 px, scaled by sqrt(W H) / 512)

with y the scribble, m its alpha (transparent pixels are left out), and R a renderer from
scaled latents to RGB in [0, 1]: the VAE decoder (:func:`decoder_renderer`), the model's tiny
decoder (:func:`core.tiny_decoder.tiny_renderer`) or the fitted linear latent -> RGB map at
latent resolution (:func:`linear_renderer`, the target area-pooled and the blur scaled to
latent pixels). Nothing here knows a request: sizes, blur and renderer are passed in, so the
samplers of :mod:`core.gradop_plus` and :mod:`core.gradop` take any loss (tests use analytic ones).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .blur import gaussian_blur
from .inputs import alpha_channel
from .latent_rgb import latents_to_rgb

REFERENCE_SIZE = 512  # blur sigma and kernel are given at this image size
BLUR = (7.0, 35)  # the reference painting blur (sigma, kernel) at 512 px

Renderer = Callable[[Tensor], Tensor]  # scaled latents (B, C, h, w) -> RGB (B, 3, H, W) in [0, 1]
Loss = Callable[[Tensor], Tensor]  # scaled latents (B, C, h, w) -> per-image loss (B,)


def blur_at(sigma: float, kernel: int, width: int, height: int, pixel: int = 1) -> tuple[float, int]:
    """(sigma, kernel) of the painting blur for a width x height image, in units of ``pixel`` pixels.

    Both scale with sqrt(W H) / 512 (the reference's 35/7 at 512 px); the kernel stays odd.
    """
    scale = math.sqrt(width * height) / REFERENCE_SIZE / pixel
    size = max(1, int(round(kernel * scale)))
    return sigma * scale, size if size % 2 else size + 1


@dataclass
class StrokeTarget:
    """The scribble y at one resolution, with the weight of each pixel in the loss (its alpha)."""

    rgb: Tensor  # (1, 3, H, W) in [0, 1]
    mask: Tensor  # (1, 1, H, W) in [0, 1]; ones for an opaque scribble

    @classmethod
    def from_image(cls, image: Image.Image, width: int, height: int,
                   device: torch.device | str = "cpu") -> "StrokeTarget":
        """Resize (premultiplied alpha, Lanczos) to width x height and split colour and alpha."""
        rgba = image.convert("RGBA")
        if rgba.size != (width, height):
            rgba = rgba.convert("RGBa").resize((width, height), Image.LANCZOS).convert("RGBA")
        array = torch.from_numpy(np.asarray(rgba, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        if alpha_channel(image).min() >= 1:
            array[:, 3] = 1.0
        return cls(array[:, :3].contiguous().to(device), array[:, 3:].contiguous().to(device))

    @property
    def partial(self) -> bool:
        return bool((self.mask < 1).any())

    def pooled(self, factor: int) -> "StrokeTarget":
        """Area-pooled by ``factor`` (colours averaged over painted pixels only)."""
        if factor == 1:
            return self
        mask = F.avg_pool2d(self.mask, factor)
        rgb = F.avg_pool2d(self.rgb * self.mask, factor) / mask.clamp_min(1e-6)
        return StrokeTarget(rgb * (mask > 0), mask)


def masked_mse(images: Tensor, target: StrokeTarget) -> Tensor:
    """Per-image MSE over the painted pixels: sum m (x - y)^2 / (3 sum m). (B,)"""
    mask = target.mask.to(images.dtype)
    err = ((images - target.rgb.to(images.dtype)) ** 2 * mask).sum(dim=(1, 2, 3))
    return err / (3 * mask.sum()).clamp_min(1e-8)


@dataclass
class PaintingLoss:
    """L(z) = MSE_m(f(R(z)), y), the data term of the GradOP objective, f a Gaussian blur, R a renderer."""

    render: Renderer  # the VAE decoder, or the linear latent -> RGB map in fast mode
    target: StrokeTarget  # at the renderer's output resolution
    sigma: float  # blur in the renderer's output pixels
    kernel: int
    circular: bool = False  # a 360-degree canvas: the blur wraps around its left and right edges

    def __call__(self, latents: Tensor) -> Tensor:
        return masked_mse(gaussian_blur(self.render(latents), self.sigma, self.kernel, self.circular), self.target)


def decoder_renderer(vae: Any) -> Renderer:
    """R(z) = clamp((D(z / scale + shift) + 1) / 2, 0, 1) with gradients (the reference's f input)."""
    scale = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

    def render(latents: Tensor) -> Tensor:
        out = vae.decode(latents.to(vae.dtype) / scale + shift).sample
        return (out.float() / 2 + 0.5).clamp(0, 1)

    return render


def wrapped_renderer(render: Renderer, pad: int, pixel: int) -> Renderer:
    """``render`` on a 360-degree canvas: ``pad`` latent columns of each edge wrapped onto the
    other side first, their ``pad * pixel`` output columns cut off after, so a decoder sees
    the canvas's edges as neighbours (as :func:`core.panorama.decode_canvas` does)."""
    def out(latents: Tensor) -> Tensor:
        wrapped = torch.cat([latents[..., -pad:], latents, latents[..., :pad]], dim=-1)
        return render(wrapped)[..., pad * pixel: -pad * pixel]

    return out


def linear_renderer(weight: Tensor, bias: Tensor) -> Renderer:
    """R(z) = clamp(A z + b) at latent resolution (the fitted map of core.latent_rgb)."""
    return lambda latents: latents_to_rgb(latents.float(), weight, bias)


def painting_loss(render: Renderer, target: StrokeTarget, size: tuple[int, int], blur: tuple[float, int] = BLUR,
                  pixel: int = 1, circular: bool = False) -> PaintingLoss:
    """The loss of a width x height (``size``) picture against the full-size ``target``, with the
    painting blur (sigma, kernel at 512 px) and a renderer whose pixels are ``pixel`` image pixels wide;
    ``circular``: a 360-degree canvas (the blur wraps around)."""
    sigma, kernel = blur_at(*blur, *size, pixel)
    return PaintingLoss(render, target.pooled(pixel), sigma, kernel, circular)


def optimise_latents(start: Tensor, loss: Loss, steps: int, lr: float, anchor: Tensor | None = None,
                     gamma: float = 0.0) -> tuple[Tensor, list[float]]:
    """Adam on sum_b [L(z_b) + gamma * mean((z_b - anchor_b)^2)] from ``start`` (the GradOP objective).

    Gradients flow through the renderer into z only. Returns z* and the objective before each step.
    """
    history: list[float] = []
    with torch.enable_grad():
        z = start.detach().float().clone().requires_grad_(True)
        optimiser = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            objective = loss(z).sum()
            if anchor is not None and gamma > 0:
                objective = objective + gamma * ((z - anchor.float()) ** 2).mean(dim=(1, 2, 3)).sum()
            optimiser.zero_grad(set_to_none=True)
            objective.backward()
            optimiser.step()
            history.append(float(objective.detach()))
    return z.detach().to(start.dtype), history


def scribble_mse(images: Sequence[Image.Image], strokes: Image.Image, blur: tuple[float, int] = BLUR,
                 circular: bool = False) -> list[float]:
    """MSE_m(f(x), y) of each final image x to the scribble y (faithfulness; lower is closer);
    ``circular``: 360-degree pictures, blurred around their joined edges."""
    width, height = images[0].size
    target = StrokeTarget.from_image(strokes, width, height)
    sigma, kernel = blur_at(*blur, width, height)
    pixels = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
                          for im in images])
    return [float(v) for v in masked_mse(gaussian_blur(pixels, sigma, kernel, circular), target)]


@dataclass
class GuidanceTrace:
    """What an optimisation did: the objective before each Adam step, per guided step, and its time."""

    losses: list[list[float]] = field(default_factory=list)
    seconds: float = 0.0
