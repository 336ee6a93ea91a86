"""Colours of a painted region map or scribble, with numpy only (no torch): the one colour
parser and the one region-map reader, used by the app and the CLI alike.

A canvas export is never a clean set of flat colours: brush edges are anti-aliased
(a red stroke on white leaves pinks along its border), uploaded maps may be JPEG-noisy,
and stray clicks leave specks. :func:`extract_regions` finds the colours a person
actually painted and gives every pixel to one of them:

1. count every exact colour; colours covering at least ``min_fraction`` of the image are
   candidates, merged when closer than ``merge_distance`` (JPEG noise, near-duplicates);
2. every pixel goes to the nearest candidate colour (anti-aliased edges join a side);
3. a few rounds of 3x3 majority vote clean the ragged borders and lone pixels;
4. regions still under ``min_fraction`` (specks) join their nearest surviving colour.

:func:`read_region_map` does this for an image of any size: the colours are found on a copy
of at most ``ANALYSIS_SIZE`` pixels a side, every pixel of the full image then goes to the
nearest of them.
"""
from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import StudioError
from .requests import show

RGB = tuple[int, int, int]
WHITE: RGB = (255, 255, 255)
MAX_MAP_COLOURS = 12  # colours a region map may have (more are merged into the nearest)
MIN_FRACTION = 0.002  # a colour covering less of the map than this is a speck or an anti-aliased edge
ANALYSIS_SIZE = 256  # colours are found on a copy at most this big (every pixel is still labelled)
_HEX = re.compile(r"^#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})$")
_RGBA = re.compile(r"^rgba?\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*(?:,\s*([\d.]+)\s*)?\)$")
_NAMED: dict[str, RGB] = {"white": WHITE, "black": (0, 0, 0), "red": (255, 0, 0), "green": (0, 128, 0),
                          "blue": (0, 0, 255), "yellow": (255, 255, 0), "transparent": WHITE}


def to_rgb(color: str | RGB) -> RGB:
    """'#ff8800', '#f80', 'rgb(1,2,3)', 'rgba(1,2,3,0.5)' or a few CSS names -> (r, g, b)."""
    if isinstance(color, tuple):
        return tuple(int(c) for c in color[:3])  # type: ignore[return-value]
    text = color.strip().lower()
    if text in _NAMED:
        return _NAMED[text]
    match = _HEX.match(text)
    if match:
        digits = match.group(1)
        if len(digits) == 3:
            digits = "".join(d * 2 for d in digits)
        return tuple(int(digits[i:i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
    match = _RGBA.match(text)
    if match:
        return tuple(min(int(match.group(i)), 255) for i in (1, 2, 3))  # type: ignore[return-value]
    raise ValueError(f"Unknown colour {color!r}: use #rrggbb or rgb(r, g, b).")


def parse_color(text: str) -> str:
    """'#RGB', '#RRGGBB' or 'RRGGBB' -> canonical '#rrggbb'; StudioError otherwise."""
    if not isinstance(text, str) or not _HEX.match(text.strip()):
        raise StudioError(f"{show(text)} is not a colour: write it as '#rrggbb' (e.g. '#ff8800').")
    return to_hex(text)


def color_name(rgb: RGB | np.ndarray) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb[:3]))


def to_hex(color: str | RGB) -> str:
    r, g, b = to_rgb(color)
    return f"#{r:02x}{g:02x}{b:02x}"


def flatten(image: np.ndarray, background: RGB = WHITE) -> np.ndarray:
    """(H, W, 3|4) uint8 -> (H, W, 3) uint8, alpha composited over ``background``."""
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"Expected an (H, W, 3) or (H, W, 4) image, got shape {image.shape}.")
    if image.shape[2] == 3:
        return image.astype(np.uint8)
    rgb = image[..., :3].astype(np.float32)
    alpha = image[..., 3:4].astype(np.float32) / 255.0
    out = rgb * alpha + np.asarray(background, np.float32) * (1 - alpha)
    return np.round(out).astype(np.uint8)


@dataclass
class MapRegion:
    """One colour of a region map and the pixels that belong to it."""

    color: RGB
    mask: np.ndarray  # (H, W) bool
    fraction: float  # share of the image's pixels

    @property
    def hex(self) -> str:
        return to_hex(self.color)


def _segment_distance(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Distance from colour c to the segment a-b (where blends of a and b lie)."""
    ab = b - a
    t = float(np.clip(np.dot(c - a, ab) / max(float(np.dot(ab, ab)), 1e-9), 0.0, 1.0))
    return float(np.linalg.norm(c - (a + t * ab)))


def _candidates(rgb: np.ndarray, min_count: int, merge_distance: float, max_colors: int) -> np.ndarray:
    """Painted colours, most frequent first: (K, 3) float.

    A colour is painted if it covers ``min_count`` pixels, is not within ``merge_distance``
    of a more frequent one (noise), and is not an edge blend: a colour on the segment
    between two painted ones, or a halo near one (JPEG ringing), whose pixels are mostly on
    borders (a straight anti-aliased edge repeats one blend along its length, so counting
    alone cannot tell it apart).
    """
    h, w, _ = rgb.shape
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    uniq, inverse, counts = np.unique(codes.ravel(), return_inverse=True, return_counts=True)
    inverse = inverse.reshape(h, w)
    padded = np.pad(inverse, 1, mode="edge")
    interior = ((padded[1:-1, :-2] == inverse) & (padded[1:-1, 2:] == inverse)
                & (padded[:-2, 1:-1] == inverse) & (padded[2:, 1:-1] == inverse))
    inner_counts = np.bincount(inverse[interior], minlength=len(uniq))
    order = np.argsort(-counts, kind="stable")
    chosen: list[np.ndarray] = []
    for index in order:
        if counts[index] < min_count or len(chosen) >= max_colors:
            break
        code = uniq[index]
        color = np.array([(code >> 16) & 255, (code >> 8) & 255, code & 255], np.float32)
        if any(np.linalg.norm(color - c) <= merge_distance for c in chosen):
            continue
        mostly_border = inner_counts[index] < 0.25 * counts[index]
        blend = any(_segment_distance(color, a, b) <= merge_distance / 2
                    for i, a in enumerate(chosen) for b in chosen[i + 1:])
        halo = any(np.linalg.norm(color - c) <= 2.5 * merge_distance for c in chosen)  # JPEG ringing
        if mostly_border and (blend or halo):
            continue
        chosen.append(color)
    if not chosen:  # nothing is frequent (a photo, noise): the single most common colour
        code = uniq[order[0]]
        chosen.append(np.array([(code >> 16) & 255, (code >> 8) & 255, code & 255], np.float32))
    return np.stack(chosen)


def nearest(pixels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour for each pixel: (N, 3), (K, 3) -> (N,)."""
    px = pixels.astype(np.float32)
    d = ((px[:, None, :] - palette[None, :, :].astype(np.float32)) ** 2).sum(-1)  # (N, K)
    return d.argmin(1)


def majority_filter(labels: np.ndarray, k: int, rounds: int = 2) -> np.ndarray:
    """3x3 mode filter of an (H, W) label image with labels in [0, k); ties keep the label."""
    h, w = labels.shape
    for _ in range(rounds):
        padded = np.pad(labels, 1, mode="edge")
        votes = np.zeros((k, h, w), np.int16)
        for dy in range(3):
            for dx in range(3):
                votes += padded[dy:dy + h, dx:dx + w][None] == np.arange(k)[:, None, None]
        best = votes.argmax(0)
        keep = votes[labels, np.arange(h)[:, None], np.arange(w)[None, :]] >= votes.max(0)
        labels = np.where(keep, labels, best)
    return labels


def extract_regions(image: np.ndarray, *, max_colors: int = 12, min_fraction: float = 0.002,
                    merge_distance: float = 24.0, background: RGB = WHITE, smooth: bool = True) -> list[MapRegion]:
    """The painted colours of ``image`` (H, W, 3|4 uint8) and their masks, largest first.

    Every pixel belongs to exactly one region. Transparent pixels count as ``background``.
    ``min_fraction``: smaller colours are anti-aliasing or specks and are merged away.
    """
    rgb = flatten(np.asarray(image), background)
    h, w = rgb.shape[:2]
    pixels = rgb.reshape(-1, 3)
    min_count = max(1, int(np.ceil(min_fraction * h * w)))
    palette = _candidates(rgb, min_count, merge_distance, max_colors)
    labels = nearest(pixels, palette).reshape(h, w)
    if smooth and len(palette) > 1:
        labels = majority_filter(labels, len(palette))
    while True:  # specks: drop the smallest region under the threshold, re-assign its pixels
        counts = np.bincount(labels.ravel(), minlength=len(palette))
        small = [i for i in np.argsort(counts) if counts[i] < min_count]
        if not small or len(palette) == 1:
            break
        drop = small[0]
        keep = [i for i in range(len(palette)) if i != drop]
        remap = np.full(len(palette), -1)
        remap[keep] = np.arange(len(keep))
        palette = palette[keep]
        moved = labels == drop
        labels = remap[labels]
        if moved.any():
            labels[moved] = nearest(rgb[moved], palette)
    counts = np.bincount(labels.ravel(), minlength=len(palette))
    regions = [MapRegion(tuple(int(round(c)) for c in palette[i]), labels == i, counts[i] / (h * w))  # type: ignore[arg-type]
               for i in range(len(palette)) if counts[i] > 0]
    return sorted(regions, key=lambda r: -r.fraction)


def region_label_image(regions: list[MapRegion]) -> np.ndarray:
    """The cleaned map: (H, W, 3) uint8 with each region painted in its flat colour."""
    h, w = regions[0].mask.shape
    out = np.zeros((h, w, 3), np.uint8)
    for region in regions:
        out[region.mask] = region.color
    return out


def is_background(color: RGB, background: RGB = WHITE, tolerance: float = 24.0) -> bool:
    return float(np.linalg.norm(np.subtract(color, background, dtype=np.float32))) <= tolerance


def swatch_data_url(color: str | RGB, size: int = 20) -> str:
    """A small square PNG of ``color`` as a data URL (for table image columns)."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), to_rgb(color)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def readable_name(color: str | RGB) -> str:
    """A rough everyday name for a colour ('red', 'light blue'), for labels and warnings."""
    r, g, b = (c / 255 for c in to_rgb(color))
    hi, lo = max(r, g, b), min(r, g, b)
    if hi - lo < 0.12:
        return "white" if hi > 0.88 else "black" if hi < 0.15 else "grey"
    if hi == r:
        hue = ((g - b) / (hi - lo)) % 6
    elif hi == g:
        hue = (b - r) / (hi - lo) + 2
    else:
        hue = (r - g) / (hi - lo) + 4
    degrees = hue * 60
    bounds = ((12, "red"), (45, "orange"), (70, "yellow"), (165, "green"), (185, "teal"), (200, "cyan"),
              (260, "blue"), (290, "purple"), (350, "pink"), (361, "red"))
    name = next(label for bound, label in bounds if degrees < bound)
    if name == "orange" and hi < 0.6:
        name = "brown"
    if lo > 0.6:
        name = f"light {name}"
    elif hi < 0.45 and name != "brown":
        name = f"dark {name}"
    return name


def free_white(image: Image.Image) -> Image.Image:
    """A map or canvas as a scribble for stroke guidance: RGBA whose white (unpainted) pixels
    are transparent, so that only painted pixels constrain the picture (RGB if all is white)."""
    array = flatten(np.asarray(image.convert("RGBA")))
    alpha = np.where((array == 255).all(axis=-1), 0, 255).astype(np.uint8)
    if not alpha.any():
        return Image.fromarray(array)
    return Image.fromarray(np.dstack([array, alpha]), "RGBA")


def read_region_map(image: Image.Image, *, max_colors: int = MAX_MAP_COLOURS, min_fraction: float = MIN_FRACTION
                    ) -> list[MapRegion]:
    """The painted colours of a region map (any size, mode or alpha: transparent is white)
    and their full-size masks, largest first; every pixel belongs to exactly one of them."""
    rgb = flatten(np.asarray(image.convert("RGBA")))
    h, w = rgb.shape[:2]
    if max(h, w) <= ANALYSIS_SIZE:
        return extract_regions(rgb, max_colors=max_colors, min_fraction=min_fraction)
    scale = ANALYSIS_SIZE / max(h, w)
    small = Image.fromarray(rgb).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.NEAREST)
    palette = np.array([r.color for r in extract_regions(np.asarray(small), max_colors=max_colors,
                                                         min_fraction=min_fraction)], np.float32)
    labels = np.concatenate([nearest(rgb[i:i + 256].reshape(-1, 3), palette).reshape(-1, w)
                             for i in range(0, h, 256)])
    if len(palette) > 1:
        labels = majority_filter(labels, len(palette))
    counts = np.bincount(labels.ravel(), minlength=len(palette))
    regions = [MapRegion(tuple(int(c) for c in palette[i]), labels == i, counts[i] / (h * w))  # type: ignore[arg-type]
               for i in range(len(palette)) if counts[i] > 0]
    return sorted(regions, key=lambda r: -r.fraction)
