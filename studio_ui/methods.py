"""Page settings -> core requests. Every page ends in ``engine.run(request)``; this module
knows which request class serves which method. No streamlit.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from core.attention_control import missing_words
from core.colors import free_white
from core.errors import StudioError
from core.image_prompt import ImageGuidance, ImagePrompt
from core.inputs import open_image
from core.panorama import MultiDiffusionRequest
from core.region_map import Region, regions_from_map
from core.requests import GenerationRequest
from core.stroke_guidance import stroke_request
from core.tiled_refine import UpscaleRequest, source_settings
from core.upscale import BUNDLED, available_upscalers

SCRIBBLE_METHODS = ("GradOP+", "GradOP+ fast", "GradOP", "SDEdit")
METHOD_HELP = {
    "GradOP+": "Gradient-optimised stroke guidance (Singh et al., CVPR 2023): realistic and faithful to your colours.",
    "GradOP+ fast": ("GradOP+ with its loss through the model's tiny decoder or a linear latent-to-colour map "
                     "instead of the full decoder: about as quick as plain text-to-image on the bundled demo model "
                     "(GradOP+ takes about 6x), and there as faithful to your colours as GradOP+ in the quality "
                     "bench."),
    "GradOP": "GradOP without the '+' refinement.",
    "SDEdit": "Plain img2img (Meng et al. 2022): noise the scribble, then denoise. Fast baseline.",
}


@dataclass(frozen=True)
class ImagePromptSettings:
    """A page's image prompts (IP-Adapter or MGAD CLIP guidance): a reference picture for the
    whole picture and/or one per region colour (PNG bytes, so settings compare and hash by
    content), their weights, the strength and how they act."""

    image_png: bytes | None = None  # the whole picture's reference
    weight: float = 1.0
    scale: float = 1.0
    regions: tuple[tuple[str, bytes, float], ...] = ()  # (colour hex, PNG, weight): Region Painter
    method: str = "clip"  # core.image_prompt.METHODS: "clip" or "ip-adapter"
    ip_adapter: str = "studio-ip-adapter"  # the adapter, for method ip-adapter

    def guidance(self) -> ImageGuidance | None:
        """The request's ImageGuidance, or None when there is no reference at all."""
        if self.image_png is None and not self.regions:
            return None
        prompts = () if self.image_png is None else (ImagePrompt(_image(self.image_png), self.weight),)
        return ImageGuidance(prompts=prompts, scale=self.scale, method=self.method, ip_adapter=self.ip_adapter)

    def region_prompt(self, color: str) -> ImagePrompt | None:
        for hex_, png, weight in self.regions:
            if hex_ == color:
                return ImagePrompt(_image(png), weight)
        return None


def _image(png: bytes) -> Image.Image:
    return open_image(png, "The image prompt")


def with_image_prompts(request: Any, ip: ImagePromptSettings | None) -> Any:
    """``request`` with the page's image prompts (unchanged without any)."""
    guidance = ip.guidance() if ip is not None else None
    return request if guidance is None else replace(request, image_guidance=guidance)


STROKE_METHODS = {"GradOP+": ("gradop+", False), "GradOP+ fast": ("gradop+", True), "GradOP": ("gradop", False),
                  "SDEdit": ("sdedit", False)}  # UI name -> (core.stroke_guidance method, fast mode)


@dataclass
class ScribbleSettings:
    prompt: str
    negative_prompt: str = ""
    steps: int = 50
    guidance_scale: float = 7.5
    method: str = "GradOP+"
    fidelity: float = 0.5  # 0: follow the prompt freely, 1: stay close to the scribble (0.5: paper defaults)
    num_images: int = 1
    seed: int = 0
    width: int = 512  # of the drawn canvas; the output is width_multiplier times wider
    height: int = 512
    width_multiplier: int = 1  # > 1: a panorama that many times wider (the scribble stretched to it)
    shifted: bool = False  # panoramas: SpotDiffusion's shifted non-overlapping windows (faster) instead of sliding
    circular: bool = False  # panoramas: 360 degrees (the left and right edges meet)
    region_words: dict[str, str] = field(default_factory=dict)  # colour hex -> words of the prompt
    region_prompts: dict[str, str] = field(default_factory=dict)  # colour hex -> the colour's own prompt
    free_background: bool = True  # unpainted (white) canvas is left to the model, not kept white
    region_attention: bool = False  # own prompts per colour in one UNet pass instead of MultiDiffusion's fusion
    scheduler: str | None = None  # None: the method's default; the model folder may recommend one (e.g. lcm)
    image_prompt: ImagePromptSettings | None = None


LIVE_STEPS = 6  # a live preview's default steps (the pages' "Live preview steps" slider)


def live_scribble_settings(s: ScribbleSettings, steps: int = LIVE_STEPS) -> ScribbleSettings:
    """A live preview of ``s`` on the fast path: the same prompt, seed, size and fidelity (so
    only the drawing changes the picture), GradOP+ fast (SDEdit stays SDEdit), one image,
    ``steps`` steps, own prompts per colour in one pass, shifted windows for panoramas."""
    return replace(s, method="SDEdit" if s.method == "SDEdit" else "GradOP+ fast", steps=steps, num_images=1,
                   region_attention=True, shifted=s.width_multiplier > 1)


def strokes_image(scribble: Image.Image, free_background: bool) -> Image.Image:
    """The scribble for guidance: RGB, or RGBA with white (unpainted) pixels transparent so
    that only painted pixels constrain the result."""
    return free_white(scribble) if free_background else scribble.convert("RGB")


def scribble_request(s: ScribbleSettings, scribble: Image.Image | None) -> Any:
    """The request for the Scribble page; ``scribble=None`` (blank canvas) is text-to-image.
    A width multiplier > 1 makes a panorama: the scribble is stretched to the wide canvas,
    which is denoised in MultiDiffusion's windows of the model's size."""
    if not s.prompt.strip():
        raise StudioError("Type a prompt first: describe the picture you want (e.g. 'a lighthouse at dusk').")
    multiplier = max(1, int(s.width_multiplier))
    width = s.width * multiplier
    common = dict(prompt=s.prompt, negative_prompt=s.negative_prompt, width=width, height=s.height, steps=s.steps,
                  guidance_scale=s.guidance_scale, seed=s.seed, num_images=s.num_images)
    if s.scheduler is not None:
        common["scheduler"] = s.scheduler
    if scribble is None:
        if multiplier > 1:
            return with_image_prompts(MultiDiffusionRequest(**common, kind="panorama", circular=s.circular,
                                                            windows="shifted" if s.shifted else "sliding"),
                                      s.image_prompt)
        return with_image_prompts(GenerationRequest(**common), s.image_prompt)
    if multiplier > 1:
        if s.region_words:
            raise StudioError("Words of the prompt do not work on a panorama yet: give the colours their own "
                              "prompts instead, or set the panorama width to ×1.")
        scribble = scribble.convert("RGB").resize((width, s.height), Image.NEAREST)
    method, fast = STROKE_METHODS[s.method]
    regions = ()
    if s.region_prompts:  # the scribble is also the region map (read as the CLI reads one)
        found, _ = regions_from_map(scribble, dict(s.region_prompts), unlisted="background")
        regions = tuple(found)
    request = stroke_request(s.prompt, strokes_image(scribble, s.free_background), method=method,
                             fidelity=s.fidelity, words=dict(s.region_words), fast=fast, regions=regions,
                             renderer="auto", region_attention=s.region_attention or None,
                             panorama=multiplier > 1, windows="shifted" if s.shifted and multiplier > 1 else None,
                             circular=s.circular and multiplier > 1,
                             **{k: v for k, v in common.items() if k != "prompt"})
    return with_image_prompts(request, s.image_prompt)


def missing_region_words(tokenizer: Any, prompt: str, words: list[str]) -> list[str]:
    """Words that are not in the prompt (by the model's tokenizer; by letters without a model)."""
    if tokenizer is not None:
        return list(missing_words(tokenizer, prompt, words))
    return [w for w in words if w.lower() not in prompt.lower()]


@dataclass
class RegionSpec:
    color: str  # hex
    prompt: str
    negative_prompt: str = ""
    seed: int | None = None


@dataclass
class RegionSettings:
    background_prompt: str
    regions: list[RegionSpec]
    negative_prompt: str = ""
    steps: int = 50
    guidance_scale: float = 7.5
    seed: int = 0
    num_images: int = 1
    width: int = 512  # of the painted map's canvas; the output is width_multiplier times wider
    height: int = 512
    width_multiplier: int = 1  # > 1: a panorama that many times wider
    circular: bool = False
    keep_colours: bool = False  # also keep the map's colours by GradOP+ (white stays free)
    fidelity: float = 0.5  # keep_colours: the stroke guidance's fidelity slider
    window: int = 64  # MultiDiffusion view size in latent pixels: the model's native latent size
    shifted: bool = False  # panoramas: SpotDiffusion's shifted non-overlapping windows (faster) instead of sliding
    attention: bool = False  # regions in one UNet pass (regional cross-attention) instead of MultiDiffusion's fusion
    fast: bool = False  # keep_colours: GradOP+ fast (live previews)
    scheduler: str | None = None  # None: the method's default; the model folder may recommend one (e.g. lcm)
    image_prompt: ImagePromptSettings | None = None  # the whole picture's and the regions' reference pictures


def live_region_settings(s: RegionSettings, steps: int = LIVE_STEPS) -> RegionSettings:
    """A live preview of ``s``: one image in ``steps`` steps, regions in one pass, shifted
    windows for panoramas, GradOP+ fast for kept colours; the same prompts, seed and size."""
    return replace(s, steps=steps, num_images=1, attention=True, shifted=s.width_multiplier > 1, fast=True)


def region_masks(region_map: Image.Image, specs: list[RegionSpec], size: tuple[int, int],
                 described: set[str] = frozenset()) -> list[tuple[RegionSpec, Image.Image]]:
    """(spec, 'L' mask at ``size``) for every colour with a prompt (or in ``described``: it has
    an image prompt); other colours and white are background. ``region_map`` must be the
    cleaned map (flat colours)."""
    stretched = np.asarray(region_map.convert("RGB").resize(size, Image.NEAREST))
    out = []
    for spec in specs:
        if not spec.prompt.strip() and spec.color not in described:
            continue
        rgb = tuple(int(spec.color.lstrip("#")[i:i + 2], 16) for i in (0, 2, 4))
        mask = (stretched == rgb).all(-1)
        if mask.any():
            out.append((spec, Image.fromarray((mask * 255).astype(np.uint8), "L")))
    return out


def _negative(global_negative: str, own: str) -> str | None:
    """A region's negative prompt: the page's plus the region's own (None: the page's)."""
    own = own.strip()
    if not own:
        return None
    return f"{global_negative.strip()}, {own}" if global_negative.strip() else own


def multidiffusion_request(s: RegionSettings, region_map: Image.Image | None, kind: str) -> Any:
    """A MultiDiffusion request (core.panorama): regions over a canvas, or a panorama."""
    width, height = s.width * max(1, s.width_multiplier), s.height
    regions = []
    ip = s.image_prompt
    described = {hex_ for hex_, _, _ in ip.regions} if ip is not None else set()
    if region_map is not None:
        for spec, mask in region_masks(region_map, s.regions, (width, height), described):
            regions.append(Region(mask=mask, prompt=spec.prompt.strip(), negative_prompt=_negative(s.negative_prompt,
                                  spec.negative_prompt), seed=spec.seed, name=spec.color,
                                  image_prompt=ip.region_prompt(spec.color) if ip is not None else None))
    prompt = s.background_prompt.strip()
    if not prompt and not regions:
        raise StudioError("Type a prompt first (for a region map: a background prompt or a prompt per colour).")
    if not prompt:
        prompt = ", ".join(r.prompt for r in regions if r.prompt)  # the background ties the regions together
    return with_image_prompts(MultiDiffusionRequest(
        prompt=prompt, negative_prompt=s.negative_prompt, regions=tuple(regions), kind=kind, width=width,
        height=height, circular=s.circular, steps=s.steps, guidance_scale=s.guidance_scale, seed=s.seed,
        num_images=s.num_images, window=s.window, stride=max(1, s.window // 8),
        windows="shifted" if s.shifted else "sliding", attention=s.attention,
        **({} if s.scheduler is None else {"scheduler": s.scheduler})), ip)


def region_request(s: RegionSettings, region_map: Image.Image | None) -> Any:
    """Region Painter: regions from the map; a width multiplier > 1 makes it a panorama."""
    if region_map is None:
        raise StudioError("Paint some regions or upload a region map first.")
    described = bool(s.image_prompt and s.image_prompt.regions)
    if not any(spec.prompt.strip() for spec in s.regions) and not s.background_prompt.strip() and not described:
        raise StudioError("Give at least one colour a prompt in the table (or type a background prompt).")
    fusion = multidiffusion_request(s, region_map, "panorama" if s.width_multiplier > 1 else "regions")
    if not s.keep_colours:
        return fusion
    size = (fusion.width, fusion.height)
    return stroke_request(fusion.prompt, free_white(region_map.convert("RGB").resize(size, Image.NEAREST)),
                          method="gradop+", fidelity=s.fidelity, negative_prompt=s.negative_prompt, width=size[0],
                          height=size[1], steps=s.steps, guidance_scale=s.guidance_scale, seed=s.seed,
                          num_images=s.num_images, regions=fusion.regions, region_attention=s.attention,
                          fast=s.fast or None, renderer="auto" if s.fast else None, scheduler=s.scheduler,
                          windows=fusion.windows, circular=fusion.circular, panorama=s.width_multiplier > 1,
                          image_guidance=fusion.image_guidance)


def panorama_request(s: RegionSettings, region_map: Image.Image | None) -> Any:
    """Panorama page: width x height (already the panorama's), optional region map."""
    if not s.background_prompt.strip():
        raise StudioError("Type a prompt first: describe the panorama (e.g. 'a photo of the dolomites at sunrise').")
    return multidiffusion_request(s, region_map, "panorama")


UPSCALE_FACTORS = (2, 4)
UPSCALER_LABELS = {BUNDLED: "Studio Compact x4 (bundled)", "bicubic": "Bicubic (no network)",
                   "lanczos": "Lanczos (no network)"}


def upscale_request(image: Image.Image, recipe: dict[str, Any] | None, *, scale: int, upscaler: str,
                    refine: float) -> tuple[UpscaleRequest, list[str]]:
    """Upscale a gallery image (x ``scale``; ``refine`` > 0 redraws it). The image's own prompts,
    region prompts and sampling settings travel with it (they guide this redraw, and a later
    one of the enlarged image). Returns the request and notes for the person."""
    if upscaler not in available_upscalers():
        raise StudioError(f"Unknown upscaler {upscaler!r}: pick one of the list.")
    settings, notes = source_settings(recipe or {}, "It is redrawn without a prompt.")
    request = UpscaleRequest(image=image, scale=scale, upscaler=upscaler, refine=float(refine), **settings)
    return request, notes if refine > 0 else []
