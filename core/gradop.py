"""GradOP (Singh, Gould, Zheng, CVPR 2023: the paper's plain two-stage form, not released): stage 1 samples x_text with
the text-only model, then solves the objective by ``grad_steps`` (40) Adam steps at ``lr``
(0.1) from x_text with d(x, x_text) = mean squared distance in latent space and gamma =
``gamma`` (0.001: L is a pixel MSE of order 1e-2, d a latent MSE of order 1 once x moves);
stage 2 forward-diffuses x* to t0 = the first timestep of the last int(steps * strength)
steps (strength 0.5; fresh noise, DDPM eq. 4) and denoises back with the same prompt and
CFG (SDEdit from x*; strength 0 returns x* itself). Choices where the paper leaves room:
x is the latent (not pixels), d is the latent MSE, the same Gaussian f as GradOP+, Adam
from x_text (the text sample is also the initial point), stage 2 reuses the scheduler and
CFG of stage 1, and its noise continues each image's generator. Any scheduler works.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .requests import check_int, check_range
from .sampling import EpsFn, ProgressCallback, denoise
from .sdedit import sample_sdedit
from .stroke_loss import GuidanceTrace, Loss, optimise_latents


@dataclass(frozen=True)
class GradOPConfig:
    """GradOP's own settings. A request records them flat, as ``strength`` (= ``t0``),
    ``grad_steps``, ``lr`` and ``gamma`` (:meth:`core.stroke_guidance.StrokeRequest.config`)."""

    t0: float = 0.5  # stage 2 restarts from the first of the last int(steps * t0) timesteps (0 returns x* itself)
    grad_steps: int = 40  # Adam steps on the objective L(x) + gamma * d(x, x_text)
    lr: float = 0.1  # Adam learning rate
    gamma: float = 0.001  # weight of d(x, x_text) (L is a pixel MSE, d a latent MSE)

    def __post_init__(self) -> None:
        check_range("Strength", self.t0, 0, 1)
        check_int("Gradient steps", self.grad_steps, 0, 1000)
        check_range("Learning rate", self.lr, 1e-6, 10)
        check_range("Gamma", self.gamma, 0, 1e4)


def _staged(callback: ProgressCallback | None, stage: str) -> ProgressCallback | None:
    if callback is None:
        return None
    return lambda event: callback(dataclasses.replace(event, stage=stage))


def sample_gradop(noise: Tensor, new_scheduler: Callable[[], Any], eps_fn: EpsFn, loss: Loss, config: GradOPConfig, *,
                  steps: int, generators: Sequence[torch.Generator], refine: tuple[Loss, int] | None = None, extra_step_kwargs: Callable[[Any], dict] | None = None,
                  callback: ProgressCallback | None = None,
                  preview: Callable[[Tensor], Any] | None = None) -> tuple[Tensor, GuidanceTrace]:
    """GradOP, the paper's two stages (solve the objective, then forward diffusion to t0 and back).

    1. x_text = text-only sample from ``noise``; x* = argmin_x L(x) + gamma * d(x, x_text), by
       ``grad_steps`` Adam steps from x_text (d = mean squared latent distance).
    2. x_{t0} = sqrt(abar_t0) x* + sqrt(1 - abar_t0) n (fresh n), then denoise from t0, where
       t0 is the first of the last int(steps * config.t0) timesteps (SDEdit's convention).
    ``new_scheduler()`` returns a fresh scheduler with its ``steps`` timesteps set (one per stage).
    """
    first = new_scheduler()
    kwargs = extra_step_kwargs or (lambda s: {})
    x_text = denoise(noise * first.init_noise_sigma, first, first.timesteps, eps_fn, extra_step_kwargs=kwargs(first),
                     callback=_staged(callback, "text"), preview=preview)
    trace = GuidanceTrace()
    start = time.perf_counter()
    x_star, history = optimise_latents(x_text, loss, config.grad_steps, config.lr, anchor=x_text, gamma=config.gamma)
    if refine is not None and refine[1] > 0:
        x_star, more = optimise_latents(x_star, refine[0], refine[1], config.lr, anchor=x_text, gamma=config.gamma)
        history += more
    trace.losses.append(history)
    trace.seconds = time.perf_counter() - start
    second = new_scheduler()
    latents = sample_sdedit(x_star, second, eps_fn, steps=steps, strength=config.t0, generators=generators,
                            extra_step_kwargs=kwargs(second), callback=_staged(callback, "denoise"), preview=preview)
    return latents, trace
