"""The one denoising loop, and the eps_fn wrappers it runs (k-diffusion style).

Contract: ``eps_fn(z, t) -> eps`` where ``z`` is the model's input at timestep ``t``
(the scheduler's ``scale_model_input`` of its sample, i.e. the variance-preserving latent
``sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``) and ``eps`` is the noise prediction. Guidance
methods wrap an eps_fn and return a new one, or hook the loop after a step.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import CancelledError

EpsFn = Callable[[Tensor, Tensor], Tensor]
ModelFn = Callable[[Tensor, Tensor, Tensor], Tensor]  # (z, t, text embeddings) -> eps
StepHook = Callable[[int, Tensor, Tensor], Tensor]  # (step index, t, latents after step) -> latents


@dataclass
class ProgressEvent:
    """What a progress callback receives. ``preview()`` is computed only if asked."""

    stage: str  # "denoise" (other stages may report later: "decode", "guidance")
    step: int  # steps done, 1..total
    total: int
    x0: Tensor | None = None  # current estimate of the clean latents, (B, 4, h, w)
    _preview: Callable[[Tensor], Any] | None = None

    def preview(self) -> Any:
        """A cheap PIL preview of the first image (linear latent -> RGB), or None."""
        if self._preview is None or self.x0 is None:
            return None
        return self._preview(self.x0[:1])


class ProgressCallback(Protocol):
    def __call__(self, event: ProgressEvent) -> bool | None: ...  # True cancels


def alpha_bar(scheduler: Any, t: Tensor | float) -> Tensor:
    """abar_t of the scheduler's training schedule at (possibly fractional) timestep t.

    Fractional timesteps (Euler with linspace spacing) interpolate sigma linearly between
    integer timesteps, as diffusers' Euler schedulers do; abar = 1 / (1 + sigma^2).
    """
    abar = scheduler.alphas_cumprod.to(torch.float64)
    tf = float(t)
    lo = int(np.floor(tf))
    if tf == lo:
        return abar[lo].float()
    sigmas = ((1 - abar) / abar) ** 0.5
    w = tf - lo
    sigma = (1 - w) * sigmas[lo] + w * sigmas[min(lo + 1, len(sigmas) - 1)]
    return (1 / (1 + sigma**2)).float()


def predict_x0(z: Tensor, eps: Tensor, abar: Tensor) -> Tensor:
    """Tweedie / DDPM eq. 15: x0 = (z - sqrt(1 - abar) eps) / sqrt(abar)."""
    return (z - (1 - abar) ** 0.5 * eps) / abar**0.5


def classifier_free_guidance(model_fn: ModelFn, cond: Tensor, uncond: Tensor | None, scale: float) -> EpsFn:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): eps_u + w (eps_c - eps_u).

    ``cond``/``uncond`` are (B, seq, dim) embeddings for a latent batch of B. The two
    passes run as one UNet batch [uncond, cond], as diffusers does. With ``scale <= 1``
    or no ``uncond``, only the conditional pass runs.
    """
    if uncond is None or scale <= 1.0:
        return lambda z, t: model_fn(z, t, cond)
    both = torch.cat([uncond, cond])

    def eps_fn(z: Tensor, t: Tensor) -> Tensor:
        eps_u, eps_c = model_fn(torch.cat([z, z]), t, both).chunk(2)
        return eps_u + scale * (eps_c - eps_u)

    return eps_fn


def step_kwargs(scheduler: Any, generator: torch.Generator | list[torch.Generator] | None, eta: float = 0.0) -> dict:
    """Extra arguments of ``scheduler.step`` that this scheduler accepts (eta, generator)."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


def denoise(
    latents: Tensor,
    scheduler: Any,
    timesteps: Tensor,
    eps_fn: EpsFn,
    *,
    extra_step_kwargs: dict[str, Any] | None = None,
    step_hook: StepHook | None = None,
    callback: ProgressCallback | None = None,
    preview: Callable[[Tensor], Any] | None = None,
) -> Tensor:
    """Run ``scheduler`` over ``timesteps`` from ``latents`` (B, 4, h, w) with ``eps_fn``.

    After each step, ``step_hook`` may replace the latents (stroke guidance does), and
    ``callback`` gets a :class:`ProgressEvent`; returning True raises CancelledError.
    """
    extra = extra_step_kwargs or {}
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        z = scheduler.scale_model_input(latents, t)
        eps = eps_fn(z, t)
        latents = scheduler.step(eps, t, latents, **extra, return_dict=False)[0]
        if step_hook is not None:
            latents = step_hook(i, t, latents)
        if callback is not None:
            x0 = predict_x0(z, eps, alpha_bar(scheduler, t).to(z.device, z.dtype))
            if callback(ProgressEvent("denoise", i + 1, total, x0, preview)):
                raise CancelledError("cancelled")
    return latents


def draw_noise(generators: Sequence[torch.Generator], like: Tensor) -> Tensor:
    """Fresh N(0, I) noise shaped like ``like``: one draw per image from its generator (CPU)."""
    shape = (1, *like.shape[1:])
    noise = torch.cat([torch.randn(shape, generator=g, dtype=like.dtype) for g in generators])
    return noise.to(like.device)
