"""SDEdit (Meng et al. 2022): img2img from the scribble at ``strength`` (transparent
pixels composited on white, the canvas colour); the baseline the paper beats.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from torch import Tensor

from .pipeline import img2img_timesteps
from .requests import check_range
from .inputs import alpha_channel
from .sampling import EpsFn, ProgressCallback, denoise, draw_noise


@dataclass(frozen=True)
class SDEditConfig:
    """SDEdit's own setting. A request records it flat, as ``strength``
    (:meth:`core.stroke_guidance.StrokeRequest.config`)."""

    strength: float = 0.8  # img2img: the last int(steps * strength) steps re-run from the noised scribble

    def __post_init__(self) -> None:
        check_range("Strength", self.strength, 0, 1)


def sample_sdedit(init: Tensor, scheduler: Any, eps_fn: EpsFn, *, steps: int, strength: float,
                  generators: Sequence[torch.Generator], extra_step_kwargs: dict[str, Any] | None = None,
                  callback: ProgressCallback | None = None, preview: Callable[[Tensor], Any] | None = None) -> Tensor:
    """SDEdit (Meng et al. 2022): x_{t0} = sqrt(abar_t0) x_init + sqrt(1 - abar_t0) n, then denoise from t0,
    t0 the first of the last int(steps * strength) timesteps (as Engine.generate's img2img)."""
    timesteps = img2img_timesteps(scheduler, steps, strength)
    if not len(timesteps):
        return init
    latents = scheduler.add_noise(init, draw_noise(generators, init), timesteps[:1].repeat(len(init)))
    return denoise(latents, scheduler, timesteps, eps_fn, extra_step_kwargs=extra_step_kwargs, callback=callback,
                   preview=preview)


def flatten_scribble(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """RGB scribble for SDEdit: transparent pixels composited on the (white) canvas colour."""
    if alpha_channel(image).min() >= 1:
        return image.convert("RGB")
    canvas = Image.new("RGBA", image.size, background + (255,))
    return Image.alpha_composite(canvas, image.convert("RGBA")).convert("RGB")
