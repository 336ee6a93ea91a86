"""The engine: text-to-image and img2img on a loaded model, through the one loop."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from PIL import Image
from torch import Tensor

from .errors import StudioError
from .latent_rgb import preview_image
from .loading import LoadOptions, ModelBundle, load_model
from .prompts import PromptEncoder
from .recipe import register_request_kind
from .requests import GenerationRequest
from .sampling import (EpsFn, ModelFn, ProgressCallback, alpha_bar, classifier_free_guidance, denoise,
                       step_kwargs)
from .schedulers import check_steps, make_scheduler
from .tiny_decoder import tiny_decoder, tiny_preview
from .vae_codec import decode_latents, encode_image, fit_image, require_multiple_of, tensor_to_pils


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


Runner = Callable[["Engine", Any, "ProgressCallback | None"], GenerationResult]
RUNNERS: dict[str, Runner] = {}  # request kind -> method; each method module registers its own


class Engine:
    """Runs requests on one loaded model. Cheap to create; the model is cached and shared."""

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle = bundle
        self.load_seconds = 0.0

    @classmethod
    def load(cls, options: LoadOptions | None = None, **kwargs: Any) -> "Engine":
        """``Engine.load(model="sd15", device="cuda")``; kwargs are LoadOptions fields."""
        start = time.perf_counter()
        if options is not None and not isinstance(options, LoadOptions):
            raise StudioError(f"Engine.load takes LoadOptions or keyword options, got {type(options).__name__}.")
        engine = cls(load_model(options or LoadOptions.from_kwargs(**kwargs)))
        engine.load_seconds = time.perf_counter() - start
        return engine

    def info(self) -> dict[str, Any]:
        return self.bundle.info()

    def run(self, request: Any, callback: ProgressCallback | None = None) -> GenerationResult:
        """Run any registered request kind (txt2img, img2img, and the guidance methods).

        The steps are checked against what the request's scheduler can take with this model
        before any work starts."""
        kind = getattr(request, "kind", None)
        if not isinstance(kind, str) or kind not in RUNNERS:
            raise StudioError(f"Cannot run {type(request).__name__}: not a request of a registered kind "
                              f"({', '.join(sorted(RUNNERS))}).")
        check_steps(request.scheduler, self.bundle.scheduler_config, request.steps)
        return RUNNERS[kind](self, request, callback)

    # --- building blocks shared by every method ------------------------------------------

    def model_fn(self, scheduler: Any) -> ModelFn:
        """The UNet as (z, t, embeddings) -> eps; v-prediction output is converted to eps."""
        unet, v_pred = self.bundle.unet, self.bundle.prediction_type == "v_prediction"

        def fn(z: Tensor, t: Tensor, embeddings: Tensor) -> Tensor:
            out = unet(z, t, encoder_hidden_states=embeddings, return_dict=False)[0]
            if v_pred:  # v = sqrt(abar) eps - sqrt(1 - abar) x0  =>  eps = sqrt(abar) v + sqrt(1 - abar) z
                abar = alpha_bar(scheduler, t).to(z.device, z.dtype)
                out = abar.sqrt() * out + (1 - abar).sqrt() * z
            return out

        return fn

    def resolve_size(self, request: GenerationRequest) -> tuple[int, int]:
        """(width, height): the request's, else the init image's, else the model's native size."""
        if request.init_image is not None and (request.width is None or request.height is None):
            w, h = request.init_image.size
            require_multiple_of(w, "The image's width")
            require_multiple_of(h, "The image's height")
        else:
            w = h = self.bundle.native_size
        return request.width or w, request.height or h

    def start_latents(self, scheduler: Any, noise: Tensor, request: Any, width: int,
                      height: int) -> tuple[Tensor, Tensor]:
        """(latents, timesteps) to denoise: scaled noise for text-to-image; for img2img (SDEdit,
        Meng et al. 2022) the init image's latents noised to the first of the last
        ``int(steps * strength)`` timesteps. ``request`` has init_image, steps, strength."""
        if request.init_image is None:
            return noise * scheduler.init_noise_sigma, scheduler.timesteps
        timesteps = img2img_timesteps(scheduler, request.steps, request.strength)
        image = fit_image(request.init_image, width, height)
        bundle = self.bundle
        latents = encode_image(bundle.vae, image, bundle.device, noise.dtype).repeat(len(noise), 1, 1, 1)
        if len(timesteps):
            latents = scheduler.add_noise(latents, noise, timesteps[:1].repeat(len(noise)))
        return latents, timesteps

    def preview(self, x0: Tensor) -> Image.Image:
        """A progress preview of x0: the model's tiny decoder if it has one, else the linear map."""
        tiny, _ = tiny_decoder(self.bundle)
        return tiny_preview(tiny, x0) if tiny is not None else preview_image(self.bundle.vae, x0)

    def decode(self, latents: Tensor, tiled: bool | None = None) -> list[Image.Image]:
        return tensor_to_pils(decode_latents(self.bundle.vae, latents, tiled))

    # --- text-to-image and img2img -------------------------------------------------------

    @torch.no_grad()
    def generate(self, request: GenerationRequest, callback: ProgressCallback | None = None) -> GenerationResult:
        """Text-to-image, or SDEdit img2img when ``request.init_image`` is set."""
        bundle, timings = self.bundle, {}
        width, height = self.resolve_size(request)
        if width * height > request.max_pixels:
            raise StudioError(f"{width}x{height} is over the limit of {request.max_pixels:,} pixels: "
                              "choose a smaller size.")
        n = request.num_images
        start = time.perf_counter()
        encoder = PromptEncoder(bundle.tokenizer, bundle.text_encoder, bundle.device)
        cond = encoder(request.prompt).repeat(n, 1, 1)
        uncond = encoder(request.negative_prompt).repeat(n, 1, 1) if request.guidance_scale > 1 else None

        scheduler = make_scheduler(request.scheduler, bundle.scheduler_config, steps=request.steps,
                                   device=bundle.device)
        factor = bundle.vae_scale_factor
        shape = (bundle.unet.config.in_channels, height // factor, width // factor)
        seeds = [request.seed + i for i in range(n)]
        noise, generators = initial_noise(seeds, shape, bundle.device, cond.dtype)
        latents, timesteps = self.start_latents(scheduler, noise, request, width, height)
        timings["encode"] = time.perf_counter() - start

        start = time.perf_counter()
        eps_fn: EpsFn = classifier_free_guidance(self.model_fn(scheduler), cond, uncond, request.guidance_scale)
        generator = generators[0] if n == 1 else generators
        latents = denoise(latents, scheduler, timesteps, eps_fn, extra_step_kwargs=step_kwargs(scheduler, generator),
                          callback=callback, preview=self.preview)
        timings["denoise"] = time.perf_counter() - start

        start = time.perf_counter()
        images = self.decode(latents)
        timings["decode"] = time.perf_counter() - start
        return GenerationResult(images=images, seeds=seeds, latents=latents, request=request, timings=timings,
                                warnings=list(bundle.warnings) + encoder.warnings)


RUNNERS["txt2img"] = RUNNERS["img2img"] = Engine.generate
register_request_kind("txt2img", GenerationRequest)
register_request_kind("img2img", GenerationRequest)
