"""Stroke guidance: scribble + prompt -> image (Singh, Gould, Zheng, CVPR 2023, arXiv 2211.17084).

The paper models the output as the solution of a constrained optimisation (the GradOP objective):

    x* = argmin_x  L(f(D(x)), y) + gamma * d(x, x_text)

with y the scribble, D the VAE decoder, f a "painting function" (a Gaussian blur: the
scribble is a blurred, flat-coloured version of the image) and x_text a sample of the
text-only model. Three methods, one request type (:class:`StrokeRequest`):

The three methods, one file each: **GradOP+** (the default; the authors' released pipeline,
:mod:`core.gradop_plus`), **GradOP** (the paper's two-stage form, :mod:`core.gradop`) and
**SDEdit** (the baseline the paper beats, :mod:`core.sdedit`); the painting function f, the
renderers and the loss are in :mod:`core.stroke_loss`. This module holds the request, the
fidelity slider, colour words, and the runner that prepares prompts, noise, eps_fn and loss
for them (through MultiDiffusion's fused eps_fn with region prompts).

**Panoramas** (``panorama=True``): a canvas wider than the model's native size is denoised in
MultiDiffusion's windows (``windows="sliding"``, exact) or SpotDiffusion's shifted
non-overlapping ones (``windows="shifted"``, faster), with or without region prompts, for
every method; the painting blur is a square picture's of the canvas's shorter side.
``circular=True`` makes it 360 degrees: the windows, the painting blur and the decoding (in the
loss and at the end) wrap around, so the left and right edges meet.

**Fast mode** (``fast=True``): the loss goes through the model's tiny decoder
(:mod:`core.tiny_decoder`: TAESD, or one distilled from the model's VAE) instead of the
full one; a model without one uses the linear latent -> RGB map fitted by least squares to
its VAE (:func:`core.latent_rgb.latent_rgb_map`, once per model), at latent resolution with
the target area-pooled and the blur scaled to latent pixels. ``refine_steps``: optional
Adam steps through the true decoder at the end of the last guided step.

**Fidelity** (one slider, 0 = ignore the scribble, 1 = follow it closely; 0.5 = the
reference defaults): see :func:`fidelity_parameters`.
"""
from __future__ import annotations

import dataclasses
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Sequence

import torch
from PIL import Image
from torch import Tensor

from .attention_control import SemanticControl, colour_mask, semantic_attention, word_regions
from .colors import parse_color
from .engine import Engine
from .errors import StudioError
from .gradop import GradOPConfig, sample_gradop
from .gradop_plus import GradOPPlusConfig, check_scheduler, gradop_plus_guidance
from .image_prompt import image_prompt_guidances, region_image_prompts
from .inputs import alpha_channel
from .pipeline import GenerationResult, Guidance, Run, prepare
from .latent_rgb import latent_rgb_map
from .panorama import (CIRCULAR_DECODE_PAD, WINDOW_MODES, MultiDiffusionRequest, bootstrap_for, decode_canvas,
                       fusion_eps_fn, fusion_setup, region_noise)
from .prompts import PromptEncoder
from .region_map import MAX_REGIONS, Region
from .requests import (GenerationRequest, Sampling, check_flag, check_image, check_int, check_pixels, check_range,
                       limit_field, show)
from .sampling import EpsFn, ProgressCallback
from .schedulers import make_scheduler
from .model_settings import read_recommended
from .sdedit import SDEditConfig, flatten_scribble
from .stroke_loss import (GuidanceTrace, Loss, Renderer, StrokeTarget, decoder_renderer, linear_renderer,
                          painting_loss, scribble_mse, wrapped_renderer)
from .tiny_decoder import tiny_decoder, tiny_renderer
from .vae_codec import require_multiple_of, tensor_to_pils

METHODS = ("gradop+", "gradop", "sdedit")
MethodConfig = GradOPPlusConfig | GradOPConfig | SDEditConfig  # each method's own settings, in its own file
METHOD_DEFAULTS: dict[str, dict[str, float | int]] = {  # per method, for the flat fields left as None
    "gradop+": {"strength": GradOPPlusConfig.start, "grad_steps": GradOPPlusConfig.grad_steps},
    "gradop": {"strength": GradOPConfig.t0, "grad_steps": GradOPConfig.grad_steps},
    "sdedit": {"strength": SDEditConfig.strength, "grad_steps": 0},
}


def method_config(method: str, request: StrokeRequest) -> MethodConfig:
    """``method``'s config from a request's flat fields (how recipes record them): ``strength``
    is GradOP+'s ``start``, GradOP's ``t0`` and SDEdit's ``strength``."""
    if method == "gradop+":
        return GradOPPlusConfig(start=request.strength, iterative_steps=request.iterative_steps,
                                grad_steps=request.grad_steps, lr=request.lr)
    if method == "gradop":
        return GradOPConfig(t0=request.strength, grad_steps=request.grad_steps, lr=request.lr, gamma=request.gamma)
    return SDEditConfig(strength=request.strength)

# --- the request -----------------------------------------------------------------------------------

RENDERERS = ("linear", "tiny", "auto")  # fast mode's renderers (see StrokeRequest.renderer)


@dataclass(frozen=True, kw_only=True)
class StrokeRequest(Sampling):
    """Scribble + prompt -> image by GradOP+, GradOP or SDEdit (defaults: the GradOP+ reference).
    Width and height default to the scribble's (multiples of 8). The method's own settings are
    recorded flat (recipes of every version replay); :attr:`config` gives them as the method's
    config dataclass, named for what they mean there (:class:`core.gradop_plus.GradOPPlusConfig`,
    :class:`core.gradop.GradOPConfig`, :class:`core.sdedit.SDEditConfig`), which also checks them."""

    strokes: Image.Image = field(compare=False)  # RGB, or RGBA whose transparent pixels do not constrain
    method: str = "gradop+"  # gradop+, gradop or sdedit
    steps: int = 50  # scheduler steps of the full schedule
    scheduler: str = "ddim"  # gradop+ needs a single-step one: ddim, euler, euler_a, lcm (or a DDPM default)
    # the methods' own settings, flat (see .config; None: the method's default):
    strength: float | None = None  # GradOPPlusConfig.start, GradOPConfig.t0 or SDEditConfig.strength
    iterative_steps: int = 3  # GradOPPlusConfig.iterative_steps
    grad_steps: int | None = None  # GradOPPlusConfig.grad_steps (12) or GradOPConfig.grad_steps (40)
    lr: float = 0.1  # GradOPPlusConfig.lr, GradOPConfig.lr
    gamma: float = 0.001  # GradOPConfig.gamma
    blur_sigma: float = 7.0  # painting function f: Gaussian sigma in pixels at 512 px (scaled with size)
    blur_kernel: int = 35  # its kernel size at 512 px (odd)
    fast: bool = False  # loss through the fitted linear latent -> RGB map at latent resolution
    refine_steps: int = 0  # fast mode: true-decoder Adam steps at the end of the last optimisation
    renderer: str = "linear"  # fast mode's renderer: "linear" (the fitted latent -> RGB map), "tiny" (the
    # model's tiny decoder, core.tiny_decoder) or "auto" (tiny where the model has one; the result's request
    # and recipe record which one ran, so a replay renders the same way)
    fidelity: float | None = None  # the slider value the parameters came from (informational)
    words: tuple[tuple[str, str], ...] = ()  # (colour '#rrggbb', phrase of the prompt) pairs
    word_weight: float = 0.4  # w of eDiff-I's bias w * log(1 + sigma_t) * max logit
    regions: tuple[Region, ...] = ()  # region prompts (MultiDiffusion): each mask gets its own prompt; the
    # request's prompt is the background's. Composes with every method; not with words.
    region_bootstrap: float = 0.4  # MultiDiffusion bootstrapping: share of the schedule's first steps
    region_attention: bool = False  # region prompts in one UNet pass (core.regional_attention), not fused
    panorama: bool = False  # a canvas wider (or taller) than the model's native size: MultiDiffusion's windows
    # of the native size (core.panorama), with or without region prompts, instead of one UNet call on it all
    windows: str = "sliding"  # region prompts or panorama: "sliding" (MultiDiffusion's overlapping windows,
    # exact) or "shifted" (SpotDiffusion's non-overlapping windows moved every step: faster on wide canvases)
    circular: bool = False  # a 360-degree panorama (with panorama or region prompts): the windows, the painting
    # blur and the decoding wrap around, so the left and right edges meet
    max_regions: int = limit_field(MAX_REGIONS)

    def __post_init__(self) -> None:
        self._check_inputs()
        super().__post_init__()
        defaults = METHOD_DEFAULTS[self.method]
        if self.strength is None:
            object.__setattr__(self, "strength", float(defaults["strength"]))
        if self.grad_steps is None:
            object.__setattr__(self, "grad_steps", int(defaults["grad_steps"]))
        object.__setattr__(self, "words", word_pairs(self.words))
        self._check_values()
        self._check_words()
        self._check_regions()

    def _check_inputs(self) -> None:
        if not isinstance(self.method, str) or self.method not in METHODS:
            raise StudioError(f"Unknown method {show(self.method)}: choose one of {', '.join(METHODS)}.")
        if not isinstance(self.strokes, Image.Image):
            raise StudioError("The scribble must be an image (PNG with or without transparency).")
        check_image("The scribble", self.strokes)
        if self.strokes.width < 8 or self.strokes.height < 8:
            raise StudioError(f"The scribble is {self.strokes.width}x{self.strokes.height}: it must be at least 8x8.")
        if not (alpha_channel(self.strokes) > 0).any():
            raise StudioError("The scribble is empty (every pixel is transparent): paint something on it.")
        for name, own in (("width", self.strokes.width), ("height", self.strokes.height)):
            if getattr(self, name) is None:
                require_multiple_of(own, f"The scribble's {name}")

    def _check_values(self) -> None:
        w, h = self.size
        check_pixels(w, h, self.max_pixels)
        for method in METHODS:  # every flat field is recorded, so each is checked by the config that owns it
            method_config(method, self)
        check_range("Blur sigma", self.blur_sigma, 0, 200)
        check_int("Blur kernel", self.blur_kernel, 1, 255)
        if self.blur_kernel % 2 == 0:
            raise StudioError(f"Blur kernel must be odd, got {self.blur_kernel}: use {self.blur_kernel + 1}.")
        check_int("Refine steps", self.refine_steps, 0, 1000)
        check_range("Word weight", self.word_weight, 0, 10)
        check_flag("Fast", self.fast)
        if self.renderer not in RENDERERS:
            raise StudioError(f"Unknown renderer {show(self.renderer)}: use one of {', '.join(RENDERERS)}.")
        if self.fidelity is not None:
            check_range("Fidelity", self.fidelity, 0, 1)

    def _check_words(self) -> None:
        for colour, phrase in self.words:
            parse_color(colour)
            if not phrase.strip():
                raise StudioError(f"Colour {colour} names no words: give words of the prompt, e.g. \"river\".")
            if not colour_mask(self.strokes, colour).any():
                raise StudioError(f"Colour {colour} is not painted in the scribble: use a colour of the scribble "
                                  "(within 40 per channel) or remove it from the words.")

    def _check_regions(self) -> None:
        if not isinstance(self.regions, (list, tuple)) or any(not isinstance(r, Region) for r in self.regions):
            raise StudioError("Regions must be a list of core.region_map.Region objects (mask + prompt).")
        object.__setattr__(self, "regions", tuple(self.regions))
        check_range("Region bootstrap", self.region_bootstrap, 0, 1)
        check_flag("Region attention", self.region_attention)
        check_int("Region limit", self.max_regions, 1, 1024)  # checked with or without regions: it is recorded
        check_flag("Panorama", self.panorama)
        if self.windows not in WINDOW_MODES:
            raise StudioError(f"Unknown windows {show(self.windows)}: use 'sliding' (MultiDiffusion, exact) or "
                              "'shifted' (SpotDiffusion, faster).")
        if self.windows != "sliding" and not self.fused:
            raise StudioError("Shifted windows are for panorama canvases and region prompts: set panorama (or "
                              "give the colours their own prompts), or leave windows sliding.")
        check_flag("Circular", self.circular)
        if self.circular and not self.fused:
            raise StudioError("A 360° picture is made in MultiDiffusion's windows: set panorama (or give the "
                              "colours their own prompts), or turn 360° off.")
        if self.regions and self.words:
            raise StudioError("Words and region prompts do not combine: give each colour either words of the "
                              "prompt or its own prompt, not both kinds in one request.")
        if self.panorama and self.words:
            raise StudioError("Words do not work on panorama canvases yet: give each colour its own prompt instead "
                              "(region prompts), or make a picture of normal width.")
        if self.fused:
            self.fusion_request()  # checks the regions as a MultiDiffusion request would

    @property
    def fused(self) -> bool:
        """Whether the request denoises through MultiDiffusion (region prompts, or a panorama canvas)."""
        return bool(self.regions) or self.panorama

    def fusion_request(self, **extra: Any) -> MultiDiffusionRequest:
        """The MultiDiffusion half of a request with region prompts or on a panorama canvas."""
        width, height = self.size
        return MultiDiffusionRequest(**{**self.sampling(), "width": width, "height": height}, regions=self.regions,
                                     kind="panorama" if self.panorama else "regions", windows=self.windows,
                                     circular=self.circular,
                                     bootstrap=self.region_bootstrap, attention=self.region_attention,
                                     max_regions=self.max_regions, **extra)

    @property
    def kind(self) -> str:
        return "stroke"

    @property
    def config(self) -> MethodConfig:
        """The chosen method's own settings (its config dataclass)."""
        return method_config(self.method, self)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the output: the request's, else the scribble's."""
        return self.width or self.strokes.width, self.height or self.strokes.height

    @property
    def blur(self) -> tuple[float, float]:
        """The painting blur (sigma, kernel) at 512 px (core.stroke_loss scales it by sqrt(W H) / 512).
        On a panorama canvas it is a square picture's of the canvas's shorter side, so that
        stretching a drawing wider does not blur it more."""
        if not self.panorama:
            return self.blur_sigma, self.blur_kernel
        width, height = self.size
        factor = math.sqrt(min(width, height) / max(width, height))
        return self.blur_sigma * factor, self.blur_kernel * factor


def fidelity_parameters(method: str, fidelity: float) -> dict[str, Any]:
    """One "fidelity" slider f in [0, 1] -> the method's parameters (0.5 = reference defaults).

    f = 0 ignores the scribble in every method, higher f follows it more closely:
      gradop+ : iterative_steps = round(6 f)          (0 .. 6; 3 at 0.5, the reference)
      sdedit  : strength = 1 - 0.4 f                  (1.0 .. 0.6; 0.8 at 0.5, the reference)
      gradop  : strength (t0) = 1 - f                 (1.0 .. 0.0, where 0 returns x* itself; 0.5 at 0.5)
    """
    check_range("Fidelity", fidelity, 0, 1)
    if not isinstance(method, str):
        raise StudioError(f"Unknown method {show(method)}: choose one of {', '.join(METHODS)}.")
    if method == "gradop+":
        return {"iterative_steps": int(round(6 * fidelity)), "fidelity": fidelity}
    if method == "sdedit":
        return {"strength": round(1 - 0.4 * fidelity, 6), "fidelity": fidelity}
    if method == "gradop":
        return {"strength": round(1 - fidelity, 6), "fidelity": fidelity}
    raise StudioError(f"Unknown method '{method}': choose one of {', '.join(METHODS)}.")


def stroke_request(prompt: str, strokes: Image.Image, method: str = "gradop+", fidelity: float | None = None,
                   words: dict[str, str | Sequence[str]] | Sequence[tuple[str, str]] = (),
                   **overrides: Any) -> StrokeRequest:
    """A request from the fidelity slider (if given) with explicit ``overrides`` winning.

    ``words`` maps a colour to a phrase or a list of phrases of the prompt.
    """
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(StrokeRequest)})
    if unknown:
        raise StudioError(f"Unknown stroke setting(s) {', '.join(unknown)}: see StrokeRequest's fields.")
    params: dict[str, Any] = fidelity_parameters(method, fidelity) if fidelity is not None else {}
    params.update({k: v for k, v in overrides.items() if v is not None})
    return StrokeRequest(prompt=prompt, strokes=strokes, method=method, words=word_pairs(words), **params)


WORDS_EXAMPLE = '{"#3050e0": "river", "#a0a0a0": ["castle", "stone walls"]}'
MAX_WORD_PAIRS = 64  # (colour, phrase) pairs per request


def word_pairs(words: dict[str, str | Sequence[str]] | Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """{colour: phrase or [phrases]} (or (colour, phrase) pairs) -> ((colour, phrase), ...)."""
    if isinstance(words, dict):
        pairs: list[tuple[str, str]] = []
        for colour, phrases in words.items():
            if isinstance(phrases, str):
                phrases = [phrases]
            if not isinstance(colour, str) or not isinstance(phrases, (list, tuple)) or not phrases \
                    or not all(isinstance(p, str) for p in phrases):
                raise StudioError(f"Words for {show(colour)} must be a phrase or a list of phrases of the prompt, "
                                  f"e.g. {WORDS_EXAMPLE}.")
            pairs.extend((colour, p) for p in phrases)
    elif isinstance(words, (list, tuple)) and all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
            for pair in words):
        pairs = [(c, p) for c, p in words]
    else:
        raise StudioError(f"Words must map colours to words of the prompt, e.g. {WORDS_EXAMPLE}.")
    if len(pairs) > MAX_WORD_PAIRS:
        raise StudioError(f"{len(pairs)} colour-word pairs is over the limit of {MAX_WORD_PAIRS}: give fewer words.")
    return tuple(pairs)


# --- the painting function f and the loss ----------------------------------------------------------


# --- running a request on the engine ---------------------------------------------------------------


@dataclass
class StrokeResult(GenerationResult):
    """A generation result with the stroke guidance's own measurements."""

    faithfulness: list[float] = field(default_factory=list)  # per image: MSE_m(f(image), y), true decoder
    losses: list[list[float]] = field(default_factory=list)  # objective before each Adam step, per optimisation


def faithfulness(images: Sequence[Image.Image], request: StrokeRequest) -> list[float]:
    """MSE_m(f(x), y) of each final image x (decoded by the true VAE) to the request's scribble y."""
    return scribble_mse(images, request.strokes, request.blur, request.circular)


def semantic_context(engine: Engine, request: StrokeRequest, cond: Callable[[], Tensor],
                     scheduler: Any) -> ContextManager[SemanticControl | None]:
    """Paint-with-words processors for the request's words (a no-op context without words);
    ``cond()`` gives the prompt's embeddings (encoded only when there are words)."""
    if not request.words:
        return nullcontext()
    bundle = engine.bundle
    width, height = request.size
    factor = bundle.vae_scale_factor
    latent_size = (height // factor, width // factor)
    strokes = request.strokes.convert("RGBA")
    if strokes.size != (width, height):
        strokes = strokes.resize((width, height), Image.NEAREST)
    regions = word_regions(bundle.tokenizer, request.prompt, strokes, request.words, latent_size)
    control = SemanticControl(regions, request.word_weight, latent_size, cond=cond()[:1])
    return semantic_attention(bundle.unet, control, scheduler)


def _base_eps(engine: Engine, request: StrokeRequest, run: Run) -> tuple[EpsFn, list[Guidance]]:
    """The eps_fn that stroke guidance steers, with the run's noise drawn: classifier-free
    guidance, or with region prompts MultiDiffusion's fusion (the guidance is unchanged); and
    the image prompts' guidances (the whole picture's, and each region's)."""
    if not request.fused:
        run.draw_noise()
        return run.cfg_eps(), image_prompt_guidances(engine, request, run.scheduler)
    fusion = request.fusion_request()
    fused = fusion_setup(engine, fusion, run.encoder, request.size)
    run.noise, run.generators = region_noise(fusion, fused.regions, fused.masks, run.shape, engine.bundle.device,
                                             fused.embeddings.dtype)
    run.warnings += fused.warnings
    images = image_prompt_guidances(engine, request, run.scheduler, region_image_prompts(fused.regions, fused.masks))
    return fusion_eps_fn(engine, fusion, run.scheduler, fused,
                         bootstrap_for(engine, fusion, run.scheduler, fused.paths, run.noise)), images


def _losses(engine: Engine, request: StrokeRequest) -> tuple[Loss, tuple[Loss, int] | None, StrokeTarget]:
    """The guidance loss (decoder or fast), the optional refinement, and the full-size target."""
    bundle = engine.bundle
    width, height = request.size
    target = StrokeTarget.from_image(request.strokes, width, height, bundle.device)
    factor, circular = bundle.vae_scale_factor, request.circular

    def decoder(render: Renderer) -> Renderer:  # a 360-degree canvas is decoded with its edges joined
        return wrapped_renderer(render, CIRCULAR_DECODE_PAD, factor) if circular else render

    decoder_loss = painting_loss(decoder(decoder_renderer(bundle.vae)), target, request.size, request.blur,
                                 circular=circular)
    if not request.fast:
        return decoder_loss, None, target
    if request.renderer == "tiny":  # the model's tiny decoder: full resolution, ~1M parameters
        tiny, why = tiny_decoder(bundle)
        if tiny is None:
            raise StudioError(f"This model has no usable tiny decoder ({why or 'none found'}): use the linear "
                              "renderer, or distil one with python -m training.tiny_decoder --model FOLDER.")
        fast_loss = painting_loss(decoder(tiny_renderer(tiny)), target, request.size, request.blur,
                                  circular=circular)
    else:  # the fitted linear map at latent resolution (pixel by pixel: nothing to wrap but the blur)
        weight, bias = latent_rgb_map(bundle.vae)
        fast_loss = painting_loss(linear_renderer(weight, bias), target, request.size, request.blur, factor,
                                  circular)
    return fast_loss, (decoder_loss, request.refine_steps) if request.refine_steps else None, target


def resolve_renderer(engine: Engine, request: StrokeRequest) -> StrokeRequest:
    """``renderer="auto"`` made concrete (the request the result and its recipe carry): the
    model folder's recommendation (``studio.json`` ``fast_renderer``) where it has one, else
    "tiny" where the model has a checked tiny decoder, else "linear"."""
    if request.renderer != "auto":
        return request
    bundle = engine.bundle
    wanted = read_recommended(bundle.location).fast_renderer if bundle.source == "folder" else None
    tiny = None
    if request.fast and wanted != "linear":
        tiny, _ = tiny_decoder(bundle)
    return dataclasses.replace(request, renderer="tiny" if tiny is not None else "linear")


@torch.no_grad()
def run_stroke(engine: Engine, request: StrokeRequest, callback: ProgressCallback | None = None) -> StrokeResult:
    """Run a :class:`StrokeRequest` on ``engine`` (registered as the runner of kind 'stroke'):
    GradOP+ is a step hook of the one loop, words an attention context, region prompts the
    eps_fn it starts from; GradOP runs its two stages itself."""
    request = resolve_renderer(engine, request)
    if request.method == "sdedit":
        return _run_sdedit(engine, request, callback)
    run = prepare(engine, request, request.size)
    eps_fn, images = _base_eps(engine, request, run)
    loss, refine, target = _losses(engine, request)
    if request.method == "gradop+":
        check_scheduler(run.scheduler)
    run.lap("encode")
    words = Guidance(context=lambda: semantic_context(engine, request, lambda: run.cond, run.new_scheduler()))
    trace = GuidanceTrace()
    if request.method == "gradop":
        for image in images:  # GradOP samples with its own loops: the image prompts wrap its eps_fn
            eps_fn = image.wrap(eps_fn)
        with words.context():
            latents, trace = sample_gradop(run.noise, run.new_scheduler, eps_fn, loss, request.config,
                                           steps=request.steps, generators=run.generators, refine=refine,
                                           extra_step_kwargs=run.step_kwargs, callback=callback,
                                           preview=engine.preview)
    else:
        mask = None
        if target.partial:
            mask = target.pooled(engine.bundle.vae_scale_factor).mask.to(run.noise.dtype)
        guided = gradop_plus_guidance(run.scheduler, loss, request.config, generators=run.generators, mask=mask,
                                      refine=refine, trace=trace, callback=callback)
        latents = run.loop(run.noise * run.scheduler.init_noise_sigma, run.scheduler.timesteps, eps_fn,
                           [words, guided, *images], callback)
    run.lap("denoise")
    run.timings["denoise"] -= trace.seconds
    run.timings["guidance"] = trace.seconds
    run.warnings += _window_warning(request)
    bundle = engine.bundle
    decode = None
    if request.circular:
        decode = lambda z: tensor_to_pils(decode_canvas(bundle.vae, z, bundle.vae_scale_factor, True))  # noqa: E731
    result = run.finish(latents, decode, result=StrokeResult, losses=trace.losses)
    result.faithfulness = faithfulness(result.images, request)
    return result


def _window_warning(request: StrokeRequest) -> list[str]:
    """A warning when GradOP+'s guided steps do not all fit before the last step."""
    if request.method != "gradop+":
        return []
    window = request.config.window(request.steps)
    if len(window) == request.iterative_steps:
        return []
    return [f"Only {len(window)} of {request.iterative_steps} iterative steps fit between the guidance start "
            f"(step {request.steps - int(request.steps * request.strength)}) and the last step: raise the steps "
            "or the strength to guide more."]


def _run_sdedit(engine: Engine, request: StrokeRequest, callback: ProgressCallback | None) -> StrokeResult:
    """SDEdit: img2img from the (flattened) scribble at ``strength``, through Engine.generate
    (through MultiDiffusion with region prompts or on a panorama canvas)."""
    if request.fused:
        result = engine.run(request.fusion_request(init_image=flatten_scribble(request.strokes),
                                                   strength=request.config.strength), callback)
        return StrokeResult(images=result.images, seeds=result.seeds, latents=result.latents, request=request,
                            timings=result.timings, warnings=result.warnings,
                            faithfulness=faithfulness(result.images, request))
    width, height = request.size
    plain = GenerationRequest(**{**request.sampling(), "width": width, "height": height},
                              init_image=flatten_scribble(request.strokes), strength=request.config.strength)
    bundle = engine.bundle
    cond = lambda: PromptEncoder(bundle.tokenizer, bundle.text_encoder, bundle.device)(request.prompt)  # noqa: E731
    with semantic_context(engine, request, cond, make_scheduler(request.scheduler, bundle.scheduler_config)):
        result = engine.generate(plain, callback)
    return StrokeResult(images=result.images, seeds=result.seeds, latents=result.latents, request=request,
                        timings=result.timings, warnings=result.warnings,
                        faithfulness=faithfulness(result.images, request))


