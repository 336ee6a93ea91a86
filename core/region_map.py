"""Regions: painted colour maps and mask images -> latent-size MultiDiffusion weights.

A person paints a region map: an RGB image whose distinct colours are regions, with a
table from colour ("#rrggbb") to prompt. Each region becomes a :class:`Region` (a mask
image and its prompt); masks of any size are resized to the canvas and brought to latent
size as in the paper (threshold 0.5, then nearest) or, on request, as soft masks
(coverage per latent pixel, optionally feathered). The background gets
W = clamp(1 - sum of region masks, 0); overlapping soft masks simply add (the fusion
divides by the total weight, so two regions at 0.6 and 0.6 share a pixel half and half).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .blur import gaussian_blur, kernel_for
from .colors import flatten, parse_color, read_region_map
from .errors import StudioError
from .image_prompt import ImagePrompt
from .inputs import MAX_INPUT_PIXELS, check_image_size, has_alpha, normalise_mode, open_image, read_json_file
from .requests import MAX_SEED, check_int, check_range, check_text, is_number, show

MAX_REGIONS = int(os.environ.get("STUDIO_MAX_REGIONS", 16))  # default limit on regions per request
ASPECT_TOLERANCE = 0.02  # relative difference of aspect ratios accepted between a map and the canvas


def _mask_image(mask: Any) -> Image.Image:
    """A mask given as a PIL image, array or tensor -> an 8-bit 'L' image (255 = inside)."""
    if isinstance(mask, Image.Image):
        check_image_size(mask.size, "A region mask", MAX_INPUT_PIXELS)
        if has_alpha(mask):
            return normalise_mode(mask).getchannel("A")  # painted on a transparent layer
        return normalise_mode(mask, grey=True).convert("L")
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            array = (mask.detach().cpu().float().numpy() if isinstance(mask, Tensor)
                     else np.asarray(mask, dtype=np.float32))
    except (TypeError, ValueError, OverflowError) as exc:
        raise StudioError(f"A region mask must be an image, or a 2-D array of numbers, got {show(mask)}.") from exc
    array = np.squeeze(array)
    if array.ndim != 2 or 0 in array.shape:
        raise StudioError(f"A region mask must be a 2-D image (height x width), got shape {array.shape}.")
    check_image_size((array.shape[1], array.shape[0]), "A region mask", MAX_INPUT_PIXELS)
    array = np.nan_to_num(array, nan=0.0, posinf=255.0, neginf=0.0)
    if array.max(initial=0) <= 1.0:
        array = array * 255.0
    return Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8), mode="L")


@dataclass(frozen=True)
class Region:
    """One painted region: its mask (any size; resized to the canvas) and what it shows."""

    mask: Image.Image = field(hash=False)  # 'L', 255 inside (arrays/tensors in [0, 1] or bool are converted)
    prompt: str
    negative_prompt: str | None = None  # None: the request's negative prompt
    seed: int | None = None  # None: the request's noise; else this region's noise is drawn from it
    weight: float = 1.0  # multiplies the mask in the fusion (relative to the background's 1)
    guidance_scale: float | None = None  # None: the request's
    name: str = ""  # for messages, e.g. its colour "#ff0000"
    image_prompt: ImagePrompt | None = None  # a reference picture for this region (core.image_prompt)

    def __post_init__(self) -> None:
        check_text("A region's prompt", self.prompt)
        check_text("A region's name", self.name)
        label = self.label
        object.__setattr__(self, "mask", _mask_image(self.mask))
        if self.image_prompt is not None and not isinstance(self.image_prompt, ImagePrompt):
            raise StudioError(f"Region {label}: its image prompt must be a core.image_prompt.ImagePrompt.")
        try:
            check_entry(self.negative_prompt, self.seed, self.weight, self.guidance_scale)
        except StudioError as exc:
            raise StudioError(f"Region {label}: {exc}") from None

    @property
    def label(self) -> str:
        prompt = self.prompt if len(self.prompt) <= 40 else self.prompt[:37] + "..."
        return f"{self.name[:20]} ('{prompt}')" if self.name else f"'{prompt}'"


def check_entry(negative_prompt: Any, seed: Any, weight: Any, guidance_scale: Any) -> None:
    """The per-region options shared by Region and the prompts file's entries."""
    check_text("The negative prompt", negative_prompt, optional=True)
    if seed is not None:
        check_int("The seed", seed, 0, MAX_SEED)
    if not is_number(weight):
        raise StudioError(f"The weight must be a number above 0 and at most 100, got {show(weight)}.")
    if not 0 < weight <= 100:
        raise StudioError(f"The weight must be above 0 and at most 100, got {show(weight)}.")
    if guidance_scale is not None:
        check_range("The guidance scale", guidance_scale, 0, 50)


# --- colours and the prompt table ----------------------------------------------------------


@dataclass(frozen=True)
class ColorPrompt:
    """What a colour of the map means: a prompt (None: the background) and its options."""

    prompt: str | None
    negative_prompt: str | None = None
    seed: int | None = None
    weight: float = 1.0
    guidance_scale: float | None = None
    image: ImagePrompt | None = None  # a reference picture for the region (needs a prompt, "" for none)

    def __post_init__(self) -> None:
        check_text("The prompt", self.prompt, optional=True)
        check_entry(self.negative_prompt, self.seed, self.weight, self.guidance_scale)
        if self.image is not None and self.prompt is None:
            raise StudioError("A background colour (prompt null) cannot have an image prompt: give the region a "
                              "prompt (\"\" for the image alone), or use --image-prompt for the whole picture.")


_ENTRY_KEYS = {"prompt", "negative", "negative_prompt", "seed", "weight", "guidance_scale", "cfg", "image",
               "image_weight"}


def _entry_image(color: str, entry: Mapping, base: Path | None) -> ImagePrompt | None:
    """The entry's ``"image"`` (a file name, relative to the prompts file) and ``"image_weight"``."""
    if "image" not in entry:
        if "image_weight" in entry:
            raise StudioError(f"The entry for {color} has an image_weight but no image.")
        return None
    name = entry["image"]
    if not isinstance(name, str) or not name.strip():
        raise StudioError(f"The entry for {color}: \"image\" must be an image file name, got {show(name)}.")
    if base is None:
        raise StudioError(f"The entry for {color} names an image; image prompts are read from a prompts file "
                          "(its images relative to it), not from inline JSON.")
    path = base / name
    weight = entry.get("image_weight", 1.0)
    try:
        return ImagePrompt(open_image(path, f"The image of {color}"), weight)
    except StudioError as exc:
        raise StudioError(f"The entry for {color}: {exc}") from None


def _color_prompt(color: str, entry: Any, base: Path | None = None) -> ColorPrompt:
    if entry is None or isinstance(entry, str):
        return ColorPrompt(entry)
    if not isinstance(entry, Mapping):
        raise StudioError(f"The prompt for {color} must be text, null (background) or an object "
                          "like {\"prompt\": ..., \"negative\": ..., \"seed\": ...}.")
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise StudioError(f"Unknown key(s) {', '.join(sorted(unknown))} for {color}: use prompt, negative, seed, "
                          "weight, guidance_scale, image, image_weight.")
    if "prompt" not in entry:
        raise StudioError(f"The entry for {color} has no \"prompt\" (use null for the background).")
    for pair in (("negative", "negative_prompt"), ("guidance_scale", "cfg")):
        if set(pair) <= set(entry):
            raise StudioError(f"The entry for {color} has both {pair[0]} and {pair[1]}: keep one.")
    scale = entry.get("guidance_scale", entry.get("cfg"))
    image = _entry_image(color, entry, base)
    try:
        return ColorPrompt(prompt=entry["prompt"], negative_prompt=entry.get("negative", entry.get("negative_prompt")),
                           seed=entry.get("seed"), weight=entry.get("weight", 1.0), guidance_scale=scale,
                           image=image)
    except StudioError as exc:
        raise StudioError(f"The entry for {color}: {exc}") from None


def parse_prompt_table(data: Any, base: Path | None = None) -> dict[str, ColorPrompt]:
    """{"#rrggbb": "prompt" | null | {"prompt": ..., "negative": ..., "seed": ..., "image": ...}} -> table.
    ``base``: the folder that entries' image file names are relative to (None: images refused)."""
    if not isinstance(data, Mapping) or not data:
        raise StudioError("The prompts file must be a JSON object mapping colours to prompts, "
                          "e.g. {\"#ff0000\": \"a red sun\", \"#ffffff\": null}.")
    table: dict[str, ColorPrompt] = {}
    for key, entry in data.items():
        if not isinstance(key, str):
            raise StudioError(f"{show(key)} is not a colour: write colours as '#rrggbb' (e.g. '#ff8800').")
        color = parse_color(key)
        if color in table:
            raise StudioError(f"Colour {color} is listed twice in the prompts file: keep one entry.")
        table[color] = _color_prompt(color, entry, base)
    return table


def load_prompt_table(path: str | Path) -> dict[str, ColorPrompt]:
    """Read a prompts JSON file (see :func:`parse_prompt_table`)."""
    data = read_json_file(path, "Prompts file", '{"#ff0000": "a red sun", "#ffffff": null}')
    return parse_prompt_table(data, Path(path).parent)


# --- region maps -----------------------------------------------------------------------------


def regions_from_map(image: Image.Image, table: Mapping[str, ColorPrompt | str | None | Mapping],
                     unlisted: str = "error") -> tuple[list[Region], list[str]]:
    """Regions of a painted colour map, and warnings; the map is read as the app reads it
    (:func:`core.colors.read_region_map`: anti-aliased edges, JPEG noise and specks join
    the nearest painted colour).

    Colours with a prompt become regions (in the table's order); white (and transparent
    pixels) without a prompt, and colours mapped to null, are background. A painted colour
    with no prompt is an error that lists every such colour (``unlisted="background"``: it is
    background too, as for a scribble of which only some colours have prompts); a prompt whose
    colour is absent is a warning.
    """
    entries = {parse_color(k): v if isinstance(v, ColorPrompt) else _color_prompt(parse_color(k), v)
               for k, v in table.items()}
    found = {r.hex: r for r in read_region_map(image)}
    missing = [h for h in found if h not in entries and h != "#ffffff"]
    if missing and unlisted != "background":
        shares = ", ".join(f"{h} ({100 * found[h].fraction:.1f}%)" for h in missing)
        raise StudioError(f"The region map has colour(s) with no prompt: {shares}. Add them to the prompts file "
                          "(map a colour to null to make it background).")
    warnings = []
    exact = flatten(np.asarray(image.convert("RGBA")))
    painted = np.zeros(exact.shape[:2], bool)
    for region in found.values():
        painted |= (exact == region.color).all(-1)
    strays = int((~painted).sum())
    if strays:
        warnings.append(f"{strays} stray pixel(s) of other colours (specks, anti-aliased edges or JPEG noise) joined "
                        "the nearest region colour; paint with a hard brush and save as PNG to avoid this.")
    regions: list[Region] = []
    for color, entry in entries.items():
        if color not in found:
            warnings.append(f"Colour {color} ('{entry.prompt}') is in the prompts file but not in the region map; "
                            "it is ignored.")
            continue
        if entry.prompt is None:
            continue  # background colour
        mask = Image.fromarray(found[color].mask.astype(np.uint8) * 255, mode="L")
        regions.append(Region(mask=mask, prompt=entry.prompt, negative_prompt=entry.negative_prompt,
                              seed=entry.seed, weight=entry.weight, guidance_scale=entry.guidance_scale, name=color,
                              image_prompt=entry.image))
    return regions, warnings


# --- masks at latent size ----------------------------------------------------------------------


def check_aspect(size: tuple[int, int], canvas: tuple[int, int], what: str = "The region map") -> None:
    """StudioError if (width, height) ``size`` and ``canvas`` differ in aspect ratio."""
    ratio, target = size[0] / size[1], canvas[0] / canvas[1]
    if abs(math.log(ratio / target)) > ASPECT_TOLERANCE:
        raise StudioError(f"{what} is {size[0]}x{size[1]} (aspect {ratio:.3g}) but the canvas is "
                          f"{canvas[0]}x{canvas[1]} (aspect {target:.3g}): paint the map at the canvas's aspect "
                          "ratio or choose a width and height that match it.")


def latent_mask(mask: Image.Image, canvas: tuple[int, int], factor: int, soft: bool = False,
                feather: float = 0.0) -> Tensor:
    """A mask image -> (h, w) weights at latent size for a (width, height) pixel canvas.

    Hard (the paper): resize to the canvas, threshold at 0.5, downsample by nearest.
    Soft: the fraction of each latent pixel's 8x8 cell inside the mask, then a Gaussian
    feather of ``feather`` latent pixels (sigma); values in [0, 1].
    """
    width, height = canvas
    resized = mask if mask.size == canvas else mask.resize(canvas, Image.BILINEAR)
    x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0)[None, None]
    size = (height // factor, width // factor)
    if not soft:
        return F.interpolate((x > 0.5).float(), size=size, mode="nearest")[0, 0]
    x = F.interpolate(x, size=size, mode="area")
    if feather > 0:
        x = gaussian_blur(x, feather, kernel_for(feather))
    return x.clamp(0, 1)[0, 0]


def latent_masks(regions: list[Region], canvas: tuple[int, int], factor: int, *, soft: bool = False,
                 feather: float = 0.0, max_regions: int = MAX_REGIONS
                 ) -> tuple[list[Region], list[Tensor], list[str]]:
    """The regions that survive at latent size, their (h, w) masks, and warnings.

    Errors: more than ``max_regions`` regions, a mask of another aspect ratio than the
    canvas. Regions with no latent pixel (empty or speck-sized) are dropped with a warning.
    """
    if len(regions) > max_regions:
        raise StudioError(f"{len(regions)} regions is over the limit of {max_regions}: merge some colours, or "
                          "raise the limit (max_regions / --max-regions).")
    kept: list[Region] = []
    masks: list[Tensor] = []
    warnings: list[str] = []
    for region in regions:
        check_aspect(region.mask.size, canvas, f"The mask of region {region.label}")
        mask = latent_mask(region.mask, canvas, factor, soft, feather)
        if float(mask.sum()) < 0.5:
            warnings.append(f"Region {region.label} is empty or smaller than one latent pixel ({factor}x{factor} "
                            "image pixels) at this canvas size; it is ignored. Paint it larger.")
            continue
        kept.append(region)
        masks.append(mask)
    return kept, masks, warnings


def background_weight(masks: list[Tensor], shape: tuple[int, int]) -> Tensor:
    """W_bg = clamp(1 - sum of region masks, 0), (h, w)."""
    total = torch.zeros(shape)
    for mask in masks:
        total = total + mask
    return (1 - total).clamp_min(0)
