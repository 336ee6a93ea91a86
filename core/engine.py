"""The engine: text-to-image and img2img on a loaded model, through the one loop."""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
from PIL import Image
from torch import Tensor

from .errors import StudioError
from .image_prompt import image_prompt_guidances
from .ip_adapter import ImageTokens, ip_adapter_session, split_tokens
from .latent_rgb import preview_image
from .loading import LoadOptions, ModelBundle, load_model
from .pipeline import GenerationResult, img2img_timesteps, prepare
from .requests import GenerationRequest
from .sampling import ModelFn, ProgressCallback, alpha_bar
from .schedulers import check_steps
from .tiny_decoder import tiny_decoder, tiny_preview
from .vae_codec import decode_latents, encode_image, fit_image, require_multiple_of, tensor_to_pils


Runner = Callable[["Engine", Any, "ProgressCallback | None"], GenerationResult]
RUNNERS: dict[str, Runner] = {}  # request kind -> method (core.methods fills it)


class Engine:
    """Runs requests on one loaded model. Cheap to create; the model is cached and shared."""

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle = bundle
        self.load_seconds = 0.0
        self.image_tokens: ImageTokens | None = None  # IP-Adapter tokens while a request runs (core.ip_adapter)

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
        with ip_adapter_session(self, request):  # IP-Adapter image prompts: installed for this request only
            return RUNNERS[kind](self, request, callback)

    # --- building blocks shared by every method ------------------------------------------

    def model_fn(self, scheduler: Any) -> ModelFn:
        """The UNet as (z, t, embeddings) -> eps; v-prediction output is converted to eps."""
        unet, v_pred = self.bundle.unet, self.bundle.prediction_type == "v_prediction"
        tokens = getattr(self, "image_tokens", None)  # embeddings end in IP-Adapter image tokens: the UNet takes (text, [tokens])

        def fn(z: Tensor, t: Tensor, embeddings: Tensor) -> Tensor:
            out = unet(z, t, encoder_hidden_states=split_tokens(embeddings, tokens), return_dict=False)[0]
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

    def generate(self, request: GenerationRequest, callback: ProgressCallback | None = None) -> GenerationResult:
        """Text-to-image, or SDEdit img2img when ``request.init_image`` is set."""
        with ip_adapter_session(self, request):
            return self._generate(request, callback)

    @torch.no_grad()
    def _generate(self, request: GenerationRequest, callback: ProgressCallback | None) -> GenerationResult:
        width, height = self.resolve_size(request)
        if width * height > request.max_pixels:
            raise StudioError(f"{width}x{height} is over the limit of {request.max_pixels:,} pixels: "
                              "choose a smaller size.")
        run = prepare(self, request, (width, height))
        noise = run.draw_noise()
        latents, timesteps = self.start_latents(run.scheduler, noise, request, width, height)
        run.lap("encode")
        guidances = image_prompt_guidances(self, request, run.scheduler)
        latents = run.loop(latents, timesteps, run.cfg_eps(), guidances, callback=callback)
        return run.finish(latents)
