"""Upscale, then redraw: super-resolution plus tiled diffusion refinement (request kind "upscale").

1. The image is enlarged ``scale`` times by a super-resolution network or a resampler
   (:mod:`core.upscale`: tiled, feathered).
2. With ``refine`` > 0 the enlarged image is redrawn at that img2img strength (SDEdit,
   Meng et al. 2022) over MultiDiffusion views of the model's native size (Bar-Tal et al.
   2023, the same :class:`core.region_fusion.RegionFusion` as panoramas): each view is
   denoised at the size the model knows and every latent pixel is the average of the views
   that cover it, so details are added at the new resolution without seams; the image's
   prompt (and its region prompts, scaled with it) guide it. The VAE encodes and decodes
   tile by tile above a megapixel, so memory stays bounded as the output grows.

``refine=0`` returns the enlarged image itself; ``refine=1`` ignores it (text-to-image on
the enlarged canvas). A recipe embeds the source image (with its SHA-256) and every
setting, so an upscaled result replays bit-exactly.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .engine import Engine, GenerationResult
from .errors import StudioError
from .panorama import MultiDiffusionRequest, run_multidiffusion
from .recipe import read_recipe, request_from_recipe
from .region_map import MAX_REGIONS, Region
from .requests import DEFAULT_MAX_PIXELS, check_image, check_int, check_pixels, check_range, limit_field, show
from .sampling import ProgressCallback, ProgressEvent
from .upscale import check_scale, resolve_upscaler, upscale

@dataclass(frozen=True)
class UpscaleRequest:
    """Enlarge ``image`` ``scale`` times, then (``refine`` > 0) redraw it with the model."""

    image: Image.Image  # the source (RGB or RGBA; alpha is resized, not redrawn)
    scale: int = 2  # 2, 3, 4 or 8
    upscaler: str = ""  # a file in pretrained_models/upscalers (name or path), "bicubic", "lanczos"; "": bundled
    refine: float = 0.0  # img2img strength of the tiled redraw; 0: none (the network's output)
    prompt: str = ""  # the redraw's prompt (the CLI and app default to the image's recipe's)
    negative_prompt: str = ""
    regions: tuple[Region, ...] = ()  # region prompts of the source, on the enlarged canvas
    steps: int = 30  # full schedule; the redraw runs its last int(steps * refine)
    guidance_scale: float = 7.5
    seed: int = 0
    scheduler: str = "default"
    num_images: int = 1
    window: int | None = None  # redraw view, latent pixels; None: the model's native latent size
    stride: int | None = None  # None: window // 2 (views overlap by half)
    windows: str = "sliding"  # "sliding" (MultiDiffusion) or "shifted" (SpotDiffusion, each pixel once a step)
    tile: int = 192  # super-resolution tile, input pixels
    overlap: int = 32  # its overlap, input pixels (a quarter of it at each inner edge is not used)
    max_regions: int = limit_field(MAX_REGIONS)
    max_pixels: int = limit_field(DEFAULT_MAX_PIXELS)

    def __post_init__(self) -> None:
        check_image("The image to upscale", self.image)
        check_int("Pixel limit", self.max_pixels, 64, 1 << 31)
        check_scale(self.scale, self.image.width, self.image.height, self.max_pixels)
        if not isinstance(self.upscaler, str):
            raise StudioError(f"The upscaler must be a name or a path, got {show(self.upscaler)}.")
        check_range("Refine strength", self.refine, 0, 1)
        check_int("Tile", self.tile, 32, 4096)
        check_int("Overlap", self.overlap, 0, self.tile // 2 - 1)
        if self.num_images != 1 and self.refine == 0:
            raise StudioError("Without a redraw every copy would be the same image: ask for one, or refine.")
        if min(self.image.size) * self.scale < 8:
            raise StudioError(f"{self.image.width}x{self.image.height} x{self.scale} is under 8 pixels on a side: "
                              "use a larger image or factor.")
        check_pixels(*self.size, self.max_pixels)
        object.__setattr__(self, "regions", tuple(self.regions) if isinstance(self.regions, list) else self.regions)
        redraw = self.redraw_request()  # prompts, sampling, regions and views are checked as the redraw's
        object.__setattr__(self, "scheduler", redraw.scheduler)  # canonicalised there

    @property
    def kind(self) -> str:
        return "upscale"

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the output; with a redraw, rounded down to multiples of 8."""
        w, h = self.image.width * self.scale, self.image.height * self.scale
        return (w - w % 8, h - h % 8) if self.refine > 0 else (w, h)

    def settings(self) -> dict[str, Any]:
        """Every field but images, for recipes and logs."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("image", "regions")}

    def redraw_request(self, enlarged: Image.Image | None = None, native_latent: int | None = None
                       ) -> MultiDiffusionRequest:
        """The redraw as a MultiDiffusion img2img request over ``enlarged`` (None: only to check
        the settings), in views of ``window`` or else ``native_latent`` latent pixels."""
        window = self.window or native_latent
        half = max(1, window // 2) if isinstance(window, int) and not isinstance(window, bool) else None
        w, h = self.image.width * self.scale, self.image.height * self.scale
        return MultiDiffusionRequest(
            prompt=self.prompt, negative_prompt=self.negative_prompt, regions=self.regions, width=w - w % 8,
            height=h - h % 8, window=window, stride=half if self.stride is None else self.stride,
            windows=self.windows, steps=self.steps, guidance_scale=self.guidance_scale, seed=self.seed,
            scheduler=self.scheduler, num_images=self.num_images, init_image=enlarged, strength=float(self.refine),
            tiled_decode=None, max_regions=self.max_regions, max_pixels=self.max_pixels)


SOURCE_FIELDS = ("prompt", "negative_prompt", "regions", "steps", "guidance_scale", "seed", "scheduler")


def source_settings(source: Any, hint: str = "Give one with --prompt.") -> tuple[dict[str, Any], list[str]]:
    """The :data:`SOURCE_FIELDS` an image's recipe has (its prompts, region prompts and sampling
    settings, for its redraw), and notes. ``source`` is a recipe (dict) or a PNG path; without a
    readable recipe the settings are empty and the one note says so."""
    try:
        request = request_from_recipe(source if isinstance(source, dict) else read_recipe(source))
    except StudioError as exc:
        return {}, [f"No prompt for the redraw: {exc} {hint}"]
    found = {name: getattr(request, name) for name in SOURCE_FIELDS if hasattr(request, name)}
    found["regions"] = tuple(r for r in found.get("regions") or () if isinstance(r, Region))
    return found, []


def _sr_progress(callback: ProgressCallback | None) -> Any:
    if callback is None:
        return None
    return lambda done, total: callback(ProgressEvent("upscale", done, total))


@torch.no_grad()
def run_upscale(engine: Engine, request: UpscaleRequest, callback: ProgressCallback | None = None) -> GenerationResult:
    """Enlarge, then redraw when asked (see the module docstring)."""
    bundle = engine.bundle
    start = time.perf_counter()
    spec = resolve_upscaler(request.upscaler or None)
    enlarged = upscale(request.image, request.scale, spec, device=str(bundle.device), tile=request.tile,
                       overlap=request.overlap, progress=_sr_progress(callback), max_pixels=request.max_pixels)
    timings = {"upscale": time.perf_counter() - start}
    name = spec if isinstance(spec, str) else Path(spec).stem
    warnings = [] if name != "lanczos" or request.upscaler else [
        "No bundled upscaler was found (pretrained_models/upscalers): enlarged with Lanczos."]
    if request.refine == 0:
        return GenerationResult(images=[enlarged], seeds=[request.seed], latents=torch.zeros(0), request=request,
                                timings=timings, warnings=warnings)
    alpha = enlarged.getchannel("A") if "A" in enlarged.getbands() else None
    width, height = request.size
    base = enlarged.convert("RGB")
    if base.size != (width, height):
        base = base.crop((0, 0, width, height))
        warnings.append(f"The enlarged image was cropped to {width}x{height} (multiples of 8) for the redraw.")
    redraw = request.redraw_request(base, bundle.native_size // bundle.vae_scale_factor)
    result = run_multidiffusion(engine, redraw, callback)
    images = result.images
    if alpha is not None:
        crop = alpha.crop((0, 0, width, height))
        images = [im.convert("RGBA") for im in images]
        for im in images:
            im.putalpha(crop)
    timings.update(result.timings)
    return GenerationResult(images=images, seeds=result.seeds, latents=result.latents, request=request,
                            timings=timings, warnings=warnings + result.warnings)


