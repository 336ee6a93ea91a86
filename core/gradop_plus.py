"""GradOP+, the sampler of stroke guidance's default method (Singh, Gould, Zheng, CVPR 2023;
the authors' released ``pipeline_gradop_stroke2img.py``; reference defaults):
DDIM 50 steps, CFG 7.5, eta 0, starting from pure noise (the text-only trajectory). At the
steps i = s .. s+N-1, s = steps - int(steps * strength) (= 10 for strength 0.8), N =
``iterative_steps`` (3), after the scheduler step to x_{t_{i+1}}: z = x_{t_{i+1}}, then
``grad_steps`` (12) Adam steps at ``lr`` (0.1) on L(z) = MSE(blur_{k=35, sigma=7}(clamp((D(z)+1)/2)), y),
then re-noise z ~ q(x_{t_{i+1}} | z) (DDPM eq. 4, fresh noise) and go on. Gradients reach the
decoder only, never the UNet. Fixed here w.r.t. the reference: any size that is a multiple
of 8 (blur scaled by sqrt(W H) / 512), the target resized to the output, the VAE's own
scaling factor, the start step computed without float truncation (the reference's
``int(50 * (1 - 0.8))`` is 9), partial scribbles (an RGBA scribble's transparent pixels
are left out of the loss, and the re-noised latent replaces the trajectory only where the
scribble is painted, by its alpha pooled to latent resolution), and any single-step
scheduler: ddim, ddpm, euler, euler_a, lcm (sigma-space samples are converted to the
variance-preserving latent that the decoder expects). Multistep solvers (dpmpp_2m, PNDM,
LMS, UniPC) keep a history of model outputs that a jump in x_t invalidates: refused.

The request, the fidelity slider and the runner are in :mod:`core.stroke_guidance`; the loss
in :mod:`core.stroke_loss`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from diffusers import (DDIMScheduler, DDPMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       LCMScheduler)
from torch import Tensor

from .errors import CancelledError, StudioError
from .pipeline import Guidance
from .requests import check_int, check_range
from .sampling import EpsFn, ProgressCallback, ProgressEvent, StepHook, alpha_bar, denoise, draw_noise
from .stroke_loss import GuidanceTrace, Loss, optimise_latents

SINGLE_STEP = (DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, LCMScheduler)
SIGMA_SPACE = (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler)  # samples are x0 + sigma * eps


@dataclass(frozen=True)
class GradOPPlusConfig:
    """GradOP+'s own settings (the reference's defaults). A request records them flat, as
    ``strength`` (= ``start``), ``iterative_steps``, ``grad_steps`` and ``lr``
    (:meth:`core.stroke_guidance.StrokeRequest.config`)."""

    start: float = 0.8  # where guidance starts: after step steps - int(steps * start) (the reference's
    # "strength"; step 10 of 50). 1 guides from the first step; 0 never guides
    iterative_steps: int = 3  # guided steps N (clipped to the schedule; the last step is never guided)
    grad_steps: int = 12  # Adam steps on the painting loss per guided step
    lr: float = 0.1  # Adam learning rate

    def __post_init__(self) -> None:
        check_range("Strength", self.start, 0, 1)
        check_int("Iterative steps", self.iterative_steps, 0, 100)
        check_int("Gradient steps", self.grad_steps, 0, 1000)
        check_range("Learning rate", self.lr, 1e-6, 10)

    def window(self, num_steps: int) -> range:
        """The indices of the guided steps in a schedule of ``num_steps``."""
        return guided_steps(num_steps, self.start, self.iterative_steps)


def guided_steps(num_steps: int, strength: float, iterative_steps: int) -> range:
    """Indices i of the steps after which GradOP+ optimises: s .. s+N-1, s = steps - int(steps*strength).

    The last step (to t = 0) is never guided, as in the reference.
    """
    start = num_steps - int(num_steps * strength)
    return range(start, min(start + iterative_steps, num_steps - 1))


def check_scheduler(scheduler: Any) -> None:
    """StudioError unless GradOP+ is sound on ``scheduler`` (a single-step sampler)."""
    if not isinstance(scheduler, SINGLE_STEP):
        raise StudioError(f"GradOP+ changes x_t between steps, which {type(scheduler).__name__} (a multistep "
                          "solver) cannot follow: use --scheduler ddim (the reference), euler, euler_a or lcm.")


def noise_level(scheduler: Any, timesteps: Tensor, index: int) -> tuple[Tensor, Tensor | None]:
    """(abar, c) of the sample at ``timesteps[index]``: c maps the scheduler's sample to the
    variance-preserving latent sqrt(abar) x0 + sqrt(1 - abar) eps (None when they are the same)."""
    if isinstance(scheduler, SIGMA_SPACE):
        sigma = scheduler.sigmas[index].double()
        abar = (1 / (1 + sigma**2)).float()
        return abar, abar.sqrt()
    return alpha_bar(scheduler, timesteps[index]), None


def gradop_plus_hook(scheduler: Any, timesteps: Tensor, loss: Loss, window: range, grad_steps: int, lr: float,
                     generators: Sequence[torch.Generator], mask: Tensor | None = None,
                     trace: GuidanceTrace | None = None, refine: tuple[Loss, int] | None = None,
                     callback: ProgressCallback | None = None) -> StepHook:
    """The GradOP+ step hook: at the steps in ``window``, after the step to x_{t_{i+1}}:

        z* = Adam^K_lr(L, z = x_{t_{i+1}})                      (K = grad_steps; the reference's optimisation)
        x_{t_{i+1}} <- m (sqrt(abar) z* + sqrt(1 - abar) n) + (1 - m) x_{t_{i+1}},  n ~ N(0, I)
                                                                 (re-noise, DDPM eq. 4; m = latent alpha)
    ``refine`` = (true-decoder loss, steps) adds that many Adam steps after the last window step.
    """
    trace = trace if trace is not None else GuidanceTrace()

    def hook(i: int, t: Tensor, latents: Tensor) -> Tensor:
        if i not in window:
            return latents
        start = time.perf_counter()
        abar, c = noise_level(scheduler, timesteps, i + 1)
        z = latents if c is None else latents * c.to(latents)
        z_star, history = optimise_latents(z, loss, grad_steps, lr)
        if refine is not None and i == window[-1] and refine[1] > 0:
            z_star, more = optimise_latents(z_star, refine[0], refine[1], lr)
            history += more
        abar = abar.to(z)
        renoised = abar.sqrt() * z_star + (1 - abar).sqrt() * draw_noise(generators, z)
        if mask is not None:
            renoised = mask * renoised + (1 - mask) * z
        trace.losses.append(history)
        trace.seconds += time.perf_counter() - start
        if callback is not None and callback(ProgressEvent("guidance", window.index(i) + 1, len(window))):
            raise CancelledError("cancelled")
        return renoised if c is None else renoised / c.to(renoised)

    return hook


def gradop_plus_guidance(scheduler: Any, loss: Loss, config: GradOPPlusConfig, *,
                         generators: Sequence[torch.Generator], mask: Tensor | None = None,
                         refine: tuple[Loss, int] | None = None, trace: GuidanceTrace | None = None,
                         callback: ProgressCallback | None = None) -> Guidance:
    """GradOP+ as a guidance of the one loop (:mod:`core.pipeline`): its step hook over the
    scheduler's timesteps (none when no step is guided). Refuses multistep schedulers."""
    check_scheduler(scheduler)
    timesteps = scheduler.timesteps
    window = config.window(len(timesteps))
    if not len(window) or config.grad_steps <= 0:
        return Guidance()
    return Guidance(hook=gradop_plus_hook(scheduler, timesteps, loss, window, config.grad_steps, config.lr,
                                          generators, mask, trace, refine, callback))


def sample_gradop_plus(noise: Tensor, scheduler: Any, eps_fn: EpsFn, loss: Loss, config: GradOPPlusConfig, *,
                       generators: Sequence[torch.Generator], mask: Tensor | None = None,
                       refine: tuple[Loss, int] | None = None, extra_step_kwargs: dict[str, Any] | None = None,
                       callback: ProgressCallback | None = None,
                       preview: Callable[[Tensor], Any] | None = None) -> tuple[Tensor, GuidanceTrace]:
    """GradOP+ from pure ``noise`` (N, C, h, w) with a scheduler whose timesteps are set.

    Independent of any VAE or engine: ``loss`` and ``eps_fn`` are injected (tests use analytic
    ones). With no guided step this is exactly the text-only sample.
    """
    trace = GuidanceTrace()
    guidance = gradop_plus_guidance(scheduler, loss, config, generators=generators, mask=mask, refine=refine,
                                    trace=trace, callback=callback)
    latents = denoise(noise * scheduler.init_noise_sigma, scheduler, scheduler.timesteps, eps_fn,
                      extra_step_kwargs=extra_step_kwargs, step_hook=guidance.hook, callback=callback,
                      preview=preview)
    return latents, trace
