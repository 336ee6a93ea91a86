"""One path for every request: prepare -> the one loop -> finish.

    run = prepare(engine, request, (width, height))   # prompt encoder, scheduler, seeds, clock
    noise = run.draw_noise()                           # one draw per seed (or a method's own noise)
    latents = run.loop(start, timesteps, run.cfg_eps(), guidances, callback)
    return run.finish(latents)                         # decode, result, timings, warnings

Text-to-image and img2img (:mod:`core.engine`), MultiDiffusion regions and panoramas
(:mod:`core.panorama`) and stroke guidance (:mod:`core.stroke_guidance`) all run this way; a
method differs only in the eps_fn it starts from and the :class:`Guidance` it adds.

A **guidance** plugs into the loop in up to three ways (each optional):

* ``wrap(eps_fn) -> eps_fn``: change the noise prediction (the eps_fn contract of
  :mod:`core.sampling`; MultiDiffusion's fusion is such a wrapper of the model call);
* ``hook(i, t, latents) -> latents``: replace the latents after step i (GradOP+);
* ``context()``: a context manager held around the whole loop, for state that must always be
  undone (attention processors installed on the UNet, removed on exit or error: paint with words).

The model call itself is ``engine.model_fn(scheduler)``, ``(z, t, embeddings) -> eps``: a plain
function that a guidance may wrap like any other.
"""
from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Sequence

import torch
from PIL import Image
from torch import Tensor

from .errors import StudioError
from .prompts import PromptEncoder
from .sampling import EpsFn, ProgressCallback, StepHook, classifier_free_guidance, denoise, step_kwargs
from .schedulers import make_scheduler


@dataclass
class GenerationResult:
    """Images of one request, with what is needed to save and replay them."""

    images: list[Image.Image]
    seeds: list[int]  # the seed each image's noise was drawn from
    latents: Tensor  # final latents before decoding, (N, 4, h, w)
    request: Any
    timings: dict[str, float] = field(default_factory=dict)  # seconds: encode, denoise, decode
    warnings: list[str] = field(default_factory=list)


def initial_noise(seeds: list[int], shape: tuple[int, int, int], device: torch.device,
                  dtype: torch.dtype) -> tuple[Tensor, list[torch.Generator]]:
    """One (1, *shape) draw per seed from ``torch.Generator('cpu')``, as diffusers does.

    Returns the (N, *shape) noise and the generators (ancestral samplers continue them).
    """
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    noise = torch.cat([torch.randn((1, *shape), generator=g, device="cpu", dtype=dtype) for g in generators])
    return noise.to(device), generators


def img2img_timesteps(scheduler: Any, steps: int, strength: float) -> Tensor:
    """The tail of the schedule that SDEdit re-runs: the last ``int(steps * strength)`` steps."""
    init_steps = min(int(steps * strength), steps)
    if init_steps == 0:  # nothing to re-run (PNDM's schedule has one step more than `steps`)
        return scheduler.timesteps[:0]
    start = max(steps - init_steps, 0) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]


@dataclass
class Guidance:
    """What a guidance method adds to the loop; see the module docstring."""

    wrap: Callable[[EpsFn], EpsFn] | None = None
    hook: StepHook | None = None
    context: Callable[[], ContextManager[Any]] | None = None


def chain_hooks(hooks: Sequence[StepHook]) -> StepHook | None:
    """One step hook running ``hooks`` in order (None for none)."""
    if not hooks:
        return None
    if len(hooks) == 1:
        return hooks[0]

    def hook(i: int, t: Tensor, latents: Tensor) -> Tensor:
        for h in hooks:
            latents = h(i, t, latents)
        return latents

    return hook


@dataclass
class Run:
    """One request on one engine, from :func:`prepare` to :meth:`finish`."""

    engine: Any  # core.engine.Engine
    request: Any  # prompt, negative_prompt, steps, guidance_scale, seed, scheduler, num_images
    width: int
    height: int
    encoder: PromptEncoder
    scheduler: Any  # the main scheduler, its timesteps set
    seeds: list[int]
    noise: Tensor | None = None
    generators: list[torch.Generator] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # the method's own (the model's and prompts' are added)
    _cond: Tensor | None = None
    _last: float = field(default_factory=time.perf_counter)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, h, w) of one image's latents."""
        bundle = self.engine.bundle
        factor = bundle.vae_scale_factor
        return bundle.unet.config.in_channels, self.height // factor, self.width // factor

    @property
    def cond(self) -> Tensor:
        """The prompt's embeddings, one row per image (encoded once)."""
        if self._cond is None:
            self._cond = self.encoder(self.request.prompt).repeat(self.request.num_images, 1, 1)
        return self._cond

    @property
    def uncond(self) -> Tensor | None:
        """The negative prompt's embeddings, or None when classifier-free guidance is off."""
        if self.request.guidance_scale <= 1:
            return None
        return self.encoder.negative(self.request.negative_prompt).repeat(self.request.num_images, 1, 1)

    def new_scheduler(self) -> Any:
        """A fresh scheduler like the main one (a method with several passes uses one per pass)."""
        bundle = self.engine.bundle
        return make_scheduler(self.request.scheduler, bundle.scheduler_config, steps=self.request.steps,
                              device=bundle.device)

    def draw_noise(self, dtype: torch.dtype | None = None) -> Tensor:
        """The initial noise, one draw per seed (dtype: the prompt embeddings')."""
        bundle = self.engine.bundle
        self.noise, self.generators = initial_noise(self.seeds, self.shape, bundle.device, dtype or self.cond.dtype)
        return self.noise

    def cfg_eps(self, scheduler: Any | None = None) -> EpsFn:
        """Classifier-free guidance over the model call: the plain eps_fn of text-to-image."""
        model_fn = self.engine.model_fn(scheduler or self.scheduler)
        return classifier_free_guidance(model_fn, self.cond, self.uncond, self.request.guidance_scale)

    def step_kwargs(self, scheduler: Any | None = None) -> dict[str, Any]:
        """``scheduler.step``'s extra arguments: the generator(s) of the noise, for ancestral samplers."""
        generator = self.generators[0] if len(self.generators) == 1 else self.generators
        return step_kwargs(scheduler or self.scheduler, generator)

    def lap(self, name: str) -> None:
        """Add the seconds since the previous lap (or since prepare) to ``timings[name]``."""
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self._last
        self._last = now

    def loop(self, latents: Tensor, timesteps: Tensor, eps_fn: EpsFn, guidances: Sequence[Guidance] = (),
             callback: ProgressCallback | None = None, scheduler: Any | None = None) -> Tensor:
        """The one denoising loop (:func:`core.sampling.denoise`) with the guidances' contexts
        held, their wrappers around ``eps_fn`` and their hooks after each step, in order."""
        scheduler = scheduler or self.scheduler
        with ExitStack() as stack:
            for guidance in guidances:
                if guidance.context is not None:
                    stack.enter_context(guidance.context())
            for guidance in guidances:
                if guidance.wrap is not None:
                    eps_fn = guidance.wrap(eps_fn)
            hook = chain_hooks([g.hook for g in guidances if g.hook is not None])
            return denoise(latents, scheduler, timesteps, eps_fn, extra_step_kwargs=self.step_kwargs(scheduler),
                           step_hook=hook, callback=callback, preview=self.engine.preview)

    def finish(self, latents: Tensor, decode: Callable[[Tensor], list[Image.Image]] | None = None,
               result: type[GenerationResult] = GenerationResult, **extra: Any) -> GenerationResult:
        """Decode (``decode`` or the engine's VAE decode, timed as "decode") and the result, with
        the model's, the prompts' and the method's warnings."""
        self.lap("denoise")
        images = (decode or self.engine.decode)(latents)
        self.lap("decode")
        warnings = list(self.engine.bundle.warnings) + self.encoder.warnings + self.warnings
        return result(images=images, seeds=self.seeds, latents=latents, request=self.request, timings=self.timings,
                      warnings=warnings, **extra)


def prepare(engine: Any, request: Any, size: tuple[int, int]) -> Run:
    """The start of every request: its prompt encoder, main scheduler and seeds (image i: seed + i)."""
    bundle = engine.bundle
    tokens = getattr(engine, "image_tokens", None)
    guidance = getattr(request, "image_guidance", None)
    if tokens is None and guidance is not None and guidance.method == "ip-adapter":
        raise StudioError("An IP-Adapter request runs through Engine.run (which installs the adapter), "
                          "not a runner called directly.")
    encoder = PromptEncoder(bundle.tokenizer, bundle.text_encoder, bundle.device, tokens)
    run = Run(engine, request, size[0], size[1], encoder, scheduler=None,
              seeds=[request.seed + i for i in range(request.num_images)])
    run.scheduler = run.new_scheduler()
    return run
