"""Panoramas and region images (MultiDiffusion, Bar-Tal et al. 2023): the request and runner.

One mechanism serves both: views over the canvas (a panorama's sliding windows, or the one
view of a small canvas) x prompt paths (the background, plus one per painted region), fused
per pixel by :class:`core.region_fusion.RegionFusion` inside the engine's one loop; or, with
``attention``, all prompts in one UNet pass per view (:mod:`core.regional_attention`).

Compared with diffusers' ``StableDiffusionPanoramaPipeline``: views cover every latent pixel
for any size that is a multiple of 8 (a last view is aligned to the right/bottom edge), a
circular panorama wraps for any height, every view and prompt of a step goes through the
UNet in a few batched calls, and several images pair their CFG halves correctly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from .engine import Engine
from .errors import StudioError
from .prompts import PromptEncoder
from .recipe import register_nested_class
from .region_fusion import Bootstrap, FusionPath, RegionFusion, View
from .region_map import MAX_REGIONS, Region, background_weight, check_aspect, latent_masks
from .regional_attention import RegionalAttention
from .image_prompt import image_prompt_guidances, region_image_prompts
from .requests import Sampling, check_flag, check_image, check_int, check_range, limit_field, show
from .pipeline import GenerationResult, initial_noise, prepare
from .sampling import ProgressCallback, alpha_bar
from .shifted_windows import SHIFTS, ShiftedWindows, shifted_views, step_offsets, views_by_step
from .vae_codec import decode_latents, require_multiple_of, tensor_to_pils

KINDS = ("regions", "panorama")
WINDOW_MODES = ("sliding", "shifted")
CIRCULAR_DECODE_PAD = 8  # latent columns wrapped onto each side before decoding a 360-degree panorama


# --- views -------------------------------------------------------------------------------------


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Starts of windows of ``window`` every ``stride`` that cover [0, size) entirely.

    diffusers stops at the last start that fits, leaving the last (size - window) % stride
    columns uncovered (zero) when the width is not a multiple of the stride; a final window
    aligned to the end covers them.
    """
    if size <= window:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def panorama_views(height: int, width: int, window: int = 64, stride: int = 8, circular: bool = False) -> list[View]:
    """The views F_i over a (height, width) latent canvas: windows of ``window`` latent pixels
    every ``stride`` (clipped to the canvas). ``circular`` wraps horizontally: views start
    every ``stride`` columns around the whole width, so the seam is denoised like any column.
    """
    if window < 1 or not 1 <= stride <= window:
        raise StudioError(f"Window {window} and stride {stride} are not valid: the window must be at least 1 latent "
                          "pixel and the stride between 1 and the window.")
    view_h, view_w = min(window, height), min(window, width)
    tops = window_starts(height, window, stride)
    if circular and width > window:
        lefts = list(range(0, width, stride))
    else:
        lefts = window_starts(width, window, stride)
    return [View(top, left, view_h, view_w) for top in tops for left in lefts]


# --- the request -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MultiDiffusionRequest(Sampling):
    """A region image or a panorama. ``prompt`` is the background's (a panorama's) prompt; width
    and height default to the init image's, else native (regions) / 4x native (panorama).

    Window, stride and padding are in latent pixels (x8 for image pixels on SD): the
    reference's 64 / 8 are 512 / 64 image pixels.
    """

    regions: tuple[Region, ...] = ()  # painted regions on the canvas (masks of any size)
    kind: str = "regions"  # "regions" or "panorama": the same mechanism, named apart in recipes
    window: int | None = None  # view size, latent pixels; None: the model's native latent size (64 on SD 1.5)
    stride: int | None = None  # view stride, latent pixels; None: window // 8 (8 on SD 1.5)
    circular: bool = False  # 360-degree panorama: views wrap around horizontally
    windows: str = "sliding"  # "sliding": the paper's overlapping views (exact); "shifted": SpotDiffusion's
    # non-overlapping windows moved every step (core.shifted_windows: each pixel about once per step, faster)
    shift: str = "random"  # shifted windows' offsets: "random" (seeded, as SpotDiffusion) or "cyclic" (by stride)
    init_image: Image.Image | None = field(default=None, compare=False)
    strength: float = 0.75  # img2img: fraction of the schedule re-run from the noised input
    bootstrap: float = 0.4  # fraction of the (full) schedule's first steps that bootstrap regions
    soft_masks: bool = False  # coverage masks instead of the paper's threshold-0.5 + nearest
    feather: float = 0.0  # soft masks: Gaussian feather sigma, latent pixels
    fast: bool = False  # evaluate each path on its padded bounding box only (approximate)
    bbox_padding: int = 8  # fast: latent pixels of context around a path's bounding box
    attention: bool = False  # one pass: every prompt in one UNet call per view through regional
    # cross-attention (core.regional_attention; about text-to-image's cost, no bootstrapping)
    unet_batch: int = 16  # rows (crop x prompt x image) per UNet call
    tiled_decode: bool | None = None  # None: tiled when the image is large
    max_regions: int = limit_field(MAX_REGIONS)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise StudioError(f"Unknown kind {show(self.kind)}: use 'regions' or 'panorama'.")
        if not isinstance(self.regions, (list, tuple)) or any(not isinstance(r, Region) for r in self.regions):
            raise StudioError("Regions must be a list of core.region_map.Region objects (mask + prompt).")
        object.__setattr__(self, "regions", tuple(self.regions))
        check_int("Region limit", self.max_regions, 1, 1024)
        if len(self.regions) > self.max_regions:
            raise StudioError(f"{len(self.regions)} regions is over the limit of {self.max_regions}: merge some "
                              "colours, or raise the limit (max_regions / --max-regions).")
        super().__post_init__()
        check_range("Strength", self.strength, 0, 1)
        check_image("The init image", self.init_image, optional=True)
        if self.window is not None:
            check_int("Window", self.window, 1, 4096)
        if self.stride is not None:
            check_int("Stride", self.stride, 1, self.window or 4096)
        check_flag("Circular", self.circular)
        if self.windows not in WINDOW_MODES:
            raise StudioError(f"Unknown windows {show(self.windows)}: use 'sliding' (MultiDiffusion, exact) or "
                              "'shifted' (SpotDiffusion, faster).")
        if self.shift not in SHIFTS:
            raise StudioError(f"Unknown shift {show(self.shift)}: use 'random' or 'cyclic'.")
        check_range("Bootstrap", self.bootstrap, 0, 1)
        check_flag("Soft masks", self.soft_masks)
        check_range("Feather", self.feather, 0, 64)
        check_flag("Fast", self.fast)
        check_int("Bounding-box padding", self.bbox_padding, 0, 4096)
        check_flag("Attention", self.attention)
        if self.fast and self.attention:
            raise StudioError("Choose one region mode: fast (bounding-box crops) or attention (one pass), not both.")
        check_int("UNet batch", self.unet_batch, 1, 1024)
        check_flag("Tiled decode", self.tiled_decode, optional=True)


def canvas_size(request: MultiDiffusionRequest, native: int) -> tuple[int, int]:
    """(width, height) in pixels: the request's, else the init image's, else the kind's default."""
    if request.init_image is not None:
        w, h = request.init_image.size
        if request.width is None or request.height is None:
            require_multiple_of(w, "The image's width")
            require_multiple_of(h, "The image's height")
    else:
        w, h = (4 * native, native) if request.kind == "panorama" else (native, native)
    width, height = request.width or w, request.height or h
    if width * height > request.max_pixels:
        raise StudioError(f"{width}x{height} is over the limit of {request.max_pixels:,} pixels: choose a smaller size.")
    if request.init_image is not None:
        check_aspect(request.init_image.size, (width, height), "The init image")
    return width, height


# --- building blocks -------------------------------------------------------------------------


@dataclass
class FusionSetup:
    """Everything the fusion needs for a request, before any denoising."""

    paths: list[FusionPath]
    embeddings: Tensor  # (P, seq, dim)
    views: list[View]  # sliding windows' views (shifted windows: the tiling at offset 0)
    masks: list[Tensor]  # latent masks of the kept regions
    regions: list[Region]
    warnings: list[str]
    window: int = 64  # view size, latent pixels
    stride: int = 8


def prompt_key(text: str, negative: bool = False, region: Region | None = None) -> tuple[str, bool, int | None]:
    """A prompt's key in :func:`prompt_table`: its text, whether it is a negative prompt, and the
    region it belongs to (whose IP-Adapter image tokens a positive prompt carries)."""
    return text, negative, None if region is None else id(region)


def prompt_table(encoder: PromptEncoder, prompts: list[tuple[str, bool, Region | None]]
                 ) -> tuple[Tensor, dict[tuple[str, bool, int | None], int]]:
    """Each distinct prompt (text, negative, region) encoded once: (P, seq, dim) and
    :func:`prompt_key` -> row. Without IP-Adapter tokens equal texts share one row; with them a
    negative prompt carries the unconditional tokens, a region's prompt its own image's."""
    tokens = encoder.image_tokens
    rows: dict[tuple, int] = {}
    index: dict[tuple[str, bool, int | None], int] = {}
    embeddings = []
    for text, negative, region in prompts:
        if tokens is None:
            same = (text,)
        else:
            same = (text, True) if negative else (text, False, id(tokens.for_region(region)))
        if same not in rows:
            rows[same] = len(rows)
            embeddings.append(encoder.negative(text) if negative else encoder(text, region))
        index[prompt_key(text, negative, region)] = rows[same]
    return torch.cat(embeddings), index


def build_paths(request: MultiDiffusionRequest, masks: list[Tensor], regions: list[Region],
                index: dict[tuple[str, bool, int | None], int], shape: tuple[int, int]) -> list[FusionPath]:
    """The background path (W = clamp(1 - sum masks, 0)) and one path per region (W = w_r m_r)."""
    paths: list[FusionPath] = []
    background = background_weight(masks, shape)
    if bool((background > 0).any()):
        paths.append(FusionPath(background, index[prompt_key(request.prompt)],
                                index[prompt_key(request.negative_prompt, True)], request.guidance_scale))
    boot = request.bootstrap > 0
    for region, mask in zip(regions, masks):
        negative = request.negative_prompt if region.negative_prompt is None else region.negative_prompt
        scale = request.guidance_scale if region.guidance_scale is None else region.guidance_scale
        paths.append(FusionPath(region.weight * mask, index[prompt_key(region.prompt, False, region)],
                                index[prompt_key(negative, True)], scale, mask.clamp(0, 1) if boot else None))
    return paths


def fusion_setup(engine: Engine, request: MultiDiffusionRequest, encoder: PromptEncoder,
                 size: tuple[int, int]) -> FusionSetup:
    """Latent masks, prompt embeddings, paths and views of a request."""
    factor = engine.bundle.vae_scale_factor
    shape = (size[1] // factor, size[0] // factor)
    regions, masks, warnings = latent_masks(list(request.regions), size, factor, soft=request.soft_masks,
                                            feather=request.feather, max_regions=request.max_regions)
    keys: list[tuple[str, bool, Region | None]] = [(request.prompt, False, None), (request.negative_prompt, True, None)]
    for region in regions:
        negative = request.negative_prompt if region.negative_prompt is None else region.negative_prompt
        keys += [(region.prompt, False, region), (negative, True, None)]
    embeddings, index = prompt_table(encoder, keys)
    paths = build_paths(request, masks, regions, index, shape)
    window = request.window or int(engine.bundle.unet.config.sample_size)
    stride = request.stride or max(1, window // 8)
    if request.windows == "shifted":
        views = shifted_views(shape[0], shape[1], window, (0, 0), request.circular)
    else:
        views = panorama_views(shape[0], shape[1], window, stride, request.circular)
    return FusionSetup(paths, embeddings, views, masks, regions, warnings, window, stride)


def region_noise(request: MultiDiffusionRequest, regions: list[Region], masks: list[Tensor],
                 shape: tuple[int, int, int], device: torch.device, dtype: torch.dtype
                 ) -> tuple[Tensor, list[torch.Generator]]:
    """The initial noise; inside a region with its own seed, that seed's noise (image i: seed + i)."""
    seeds = [request.seed + i for i in range(request.num_images)]
    noise, generators = initial_noise(seeds, shape, device, dtype)
    for region, mask in zip(regions, masks):
        if region.seed is not None:
            own, _ = initial_noise([region.seed + i for i in range(request.num_images)], shape, device, dtype)
            noise = torch.where((mask >= 0.5).to(device), own, noise)
    return noise, generators


@torch.no_grad()
def constant_color_latents(vae: Any, count: int, generator: torch.Generator, factor: int) -> Tensor:
    """(count, C) latents of random constant-colour images (the reference's bootstrapping
    backgrounds), each the centre latent pixel of a small encoded flat image."""
    param = next(vae.parameters())
    rgb = torch.rand(count, 3, generator=generator) * 2 - 1
    side = 2 * factor * 4  # an 8x8-latent flat image: the centre sees no border
    images = rgb[:, :, None, None].expand(count, 3, side, side).to(param.device, param.dtype)
    mean = vae.encode(images).latent_dist.mean
    scale = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    centre = ((mean - shift) * scale)[:, :, mean.shape[2] // 2, mean.shape[3] // 2]
    return centre.float().cpu()


def bootstrap_for(engine: Engine, request: MultiDiffusionRequest, scheduler: Any, paths: list[FusionPath],
                  noise: Tensor) -> Bootstrap | None:
    """Bootstrapping over the first ``request.bootstrap`` of the full schedule, if any region uses it."""
    count = int(request.bootstrap * request.steps) * getattr(scheduler, "order", 1)
    if count <= 0 or not any(p.bootstrap_mask is not None for p in paths):
        return None
    generator = torch.Generator("cpu").manual_seed(request.seed)
    colors = constant_color_latents(engine.bundle.vae, max(1, int(request.bootstrap * request.steps)), generator,
                                    engine.bundle.vae_scale_factor)
    timesteps = frozenset(float(t) for t in scheduler.timesteps[:count])
    return Bootstrap(colors, noise, timesteps, lambda t: alpha_bar(scheduler, t), generator)


def _clipping_warning(scheduler: Any, setup: FusionSetup) -> list[str]:
    config = scheduler.config
    clips = bool(getattr(config, "clip_sample", False) or getattr(config, "thresholding", False))
    if clips and (len(setup.views) > 1 or len(setup.paths) > 1):
        return [f"{type(scheduler).__name__} clips x0 (clip_sample/thresholding in the model's scheduler config): "
                "fusing noise predictions then equals the paper's fusion of x_{t-1} only approximately; "
                "choose another scheduler for the exact method."]
    return []


def decode_canvas(vae: Any, latents: Tensor, factor: int, circular: bool = False,
                  tiled: bool | None = None) -> Tensor:
    """Latents -> images in [0, 1]; a circular panorama is decoded with wrapped columns on
    both sides (then cropped) so its left and right edges meet without a seam."""
    if not circular:
        return decode_latents(vae, latents, tiled)
    pad = min(CIRCULAR_DECODE_PAD, latents.shape[-1])
    wrapped = torch.cat([latents[..., -pad:], latents, latents[..., :pad]], dim=-1)
    return decode_latents(vae, wrapped, tiled)[..., pad * factor : -pad * factor]


# --- the runner ------------------------------------------------------------------------------


def fusion_eps_fn(engine: Engine, request: MultiDiffusionRequest, scheduler: Any, setup: FusionSetup,
                  bootstrap: Bootstrap | None) -> RegionFusion | ShiftedWindows | RegionalAttention:
    """The request's eps_fn: MultiDiffusion over the engine's UNet, on sliding or shifted
    windows, or every prompt in one pass (``attention``); composable with step hooks."""
    if request.attention:
        views: Any = setup.views
        if request.windows == "shifted":
            offsets = step_offsets(scheduler.timesteps, setup.window, request.shift, request.seed, setup.stride)
            height, width = setup.paths[0].weight.shape
            views = views_by_step(height, width, setup.window, offsets, request.circular)
        return RegionalAttention(engine.model_fn(scheduler), engine.bundle.unet, setup.embeddings, setup.paths,
                                 views, batch_rows=request.unet_batch)
    align = 2 ** (len(engine.bundle.unet.config.block_out_channels) - 1)
    options = {"bootstrap": bootstrap, "batch_rows": request.unet_batch, "align": align,
               "crop_padding": request.bbox_padding if request.fast else None}
    if request.windows == "shifted":
        offsets = step_offsets(scheduler.timesteps, setup.window, request.shift, request.seed, setup.stride)
        return ShiftedWindows(engine.model_fn(scheduler), setup.embeddings, setup.paths, setup.window, offsets,
                              circular=request.circular, **options)
    return RegionFusion(engine.model_fn(scheduler), setup.embeddings, setup.paths, setup.views, **options)


@torch.no_grad()
def run_multidiffusion(engine: Engine, request: MultiDiffusionRequest,
                       callback: ProgressCallback | None = None) -> GenerationResult:
    """Generate a region image or panorama (text-to-image, or img2img from ``init_image``)."""
    bundle = engine.bundle
    width, height = canvas_size(request, bundle.native_size)
    run = prepare(engine, request, (width, height))
    setup = fusion_setup(engine, request, run.encoder, (width, height))
    run.noise, run.generators = region_noise(request, setup.regions, setup.masks, run.shape, bundle.device,
                                             setup.embeddings.dtype)
    latents, timesteps = engine.start_latents(run.scheduler, run.noise, request, width, height)
    bootstrap = bootstrap_for(engine, request, run.scheduler, setup.paths, run.noise)
    run.lap("encode")
    images = image_prompt_guidances(engine, request, run.scheduler, region_image_prompts(setup.regions, setup.masks))
    latents = run.loop(latents, timesteps, fusion_eps_fn(engine, request, run.scheduler, setup, bootstrap), images,
                       callback=callback)
    run.warnings = setup.warnings + _clipping_warning(run.scheduler, setup)
    return run.finish(latents, decode=lambda z: tensor_to_pils(
        decode_canvas(bundle.vae, z, bundle.vae_scale_factor, request.circular, request.tiled_decode)))

register_nested_class(Region)  # recipes rebuild the regions nested in a request
