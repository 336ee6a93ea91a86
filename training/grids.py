"""Labelled sample grids for the README, made with the demo model through the core library.

    python -m training.grids --model pretrained_models/studio-demo --out docs/samples \\
        [--size 256] [--steps 20] [--seed 0] [--threads N] [--device auto] [--only prompts scribble regions]

writes three PNGs into ``--out``:

- ``prompts.png``: :data:`PROMPTS` (8 prompts over the 5 styles and 3 times of day), 2 seeds
  each, 4 columns; each tile is captioned underneath with its prompt and seed.
- ``scribble.png``: a row per scene of :data:`SCRIBBLE_SCENES`; columns: the flat scribble
  (:func:`training.procedural.render_scribble`), the painting made from it by stroke guidance
  (GradOP+ with :func:`core.stroke_guidance.stroke_request`'s defaults) and, for reference,
  text-to-image with the same prompt, seed and scheduler (the GradOP+ sample without the
  scribble). The row's prompt is written under it.
- ``regions.png``: a row per scene of :data:`REGION_SCENES`; columns: the region map as a
  person would paint it (flat colours, named), the painting from region fusion
  (MultiDiffusion, kind ``regions``, default bootstrap) and text-to-image of the whole caption.
  Sky and ground are the background (the caption is its prompt); every other region gets
  e.g. "a watercolor painting of purple mountains at sunset".

Every image comes from one request run on :class:`core.engine.Engine`, seeded, so the grids are
deterministic. Prompts use the vocabulary of :func:`training.procedural.caption`.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from core.cli import EXIT_USER_ERROR, OneLineParser
from core.engine import Engine
from core.errors import StudioError
from core.panorama import MultiDiffusionRequest
from core.colors import color_name
from core.region_map import Region, regions_from_map
from core.requests import MAX_SEED, GenerationRequest, check_range
from core.stroke_guidance import stroke_request
from core.vae_codec import require_multiple_of

from . import procedural as P

log = logging.getLogger(__name__)

# 8 prompts in the grammar of procedural.caption: styles watercolor x2, oil x2, poster x2,
# pointillism, ink; sunset x3, night x2, day x3; colours from each object's own list.
PROMPTS: tuple[str, ...] = (
    "a watercolor painting of a red sun over purple mountains at sunset",
    "an oil painting of a white moon above a dark blue sea at night",
    "a vintage travel poster of a white house with a red roof and rolling green hills by day",
    "a pointillist painting of two red sailboats and a turquoise lake under a blue sky by day",
    "an ink sketch of three dark green pine trees and a river at sunset",
    "a watercolor of a yellow crescent moon above indigo mountains at night with a teal lake",
    "an oil painting of a golden field, two red houses with brown roofs and three dark green trees on a sunny day",
    "a flat poster of an orange sun over the sea at sunset with a red sailboat",
)
SCRIBBLE_SCENES: tuple[tuple[int, str], ...] = (  # (scene seed, style): sunset sea, day lake, night coast, day meadow
    (4, "watercolor"), (35, "oil"), (26, "poster"), (21, "pointillism"))
REGION_SCENES: tuple[tuple[int, str], ...] = (  # few large regions: day, sunset, night
    (51, "ink"), (46, "oil"), (13, "watercolor"))
BACKGROUND_KINDS = ("sky", "ground")  # painted in the map, but prompted by the caption (the background)
STYLE_PHRASE = {"watercolor": "a watercolor painting", "oil": "an oil painting", "poster": "a flat poster",
                "pointillism": "a pointillist painting", "ink": "an ink sketch"}
TIME_PHRASE = {"day": "by day", "sunset": "at sunset", "night": "at night"}
GRID_NAMES = ("prompts", "scribble", "regions")
SCRIBBLE_HEADERS = ("scribble", "GradOP+ (scribble + text)", "text only")
REGION_HEADERS = ("region map", "MultiDiffusion regions", "text only")
GAP = 4  # px of white between tiles and around the grid
CAPTION_LINES = 3  # lines of text under each tile (prompt grid) or row (scene grids)
WHITE, INK = (255, 255, 255), (24, 24, 30)


# --- layout and text -------------------------------------------------------------------------------


def font_size(tile: int) -> int:
    """Text height in px for tiles of ``tile`` px: 12 at 256 px, never below 8."""
    return max(8, round(tile / 21))


def line_height(tile: int) -> int:
    return math.ceil(1.3 * font_size(tile))


def text_band(tile: int, lines: int) -> int:
    """Height in px of a band of ``lines`` lines of text (0 lines: no band)."""
    return lines * line_height(tile) + GAP if lines else 0


@dataclass(frozen=True)
class Layout:
    """Tiles of ``tile`` px in ``rows`` x ``cols``, ``GAP`` apart; an optional header band above
    the first row, and a caption band of ``caption`` px under every row."""

    rows: int
    cols: int
    tile: int
    header: int = 0
    caption: int = 0

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the grid image."""
        pitch = self.tile + self.caption + GAP
        return GAP + self.cols * (self.tile + GAP), GAP + self.header + self.rows * pitch

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of tile (row, col)."""
        left = GAP + col * (self.tile + GAP)
        top = GAP + self.header + row * (self.tile + self.caption + GAP)
        return left, top, left + self.tile, top + self.tile


def load_font(tile: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=font_size(tile))


def wrap(text: str, font: Any, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` px; the last kept line ends in '...' if text is left over."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        lines = lines[: max_lines - 1] + [last.rstrip() + "..."]
    return lines


def draw_text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font: Any, width: int,
              lines: int, tile: int) -> None:
    """``text`` wrapped into at most ``lines`` lines of ``width`` px from ``xy`` (top left)."""
    x, y = xy
    for i, line in enumerate(wrap(text, font, width, lines)):
        draw.text((x, y + i * line_height(tile)), line, fill=INK, font=font)


def compose(layout: Layout, tiles: dict[tuple[int, int], Image.Image], headers: Sequence[str] = (),
            captions: dict[tuple[int, int | None], str] | None = None, caption_lines: int = CAPTION_LINES
            ) -> Image.Image:
    """Paste ``tiles`` at their (row, col) boxes; write ``headers`` above the columns and each
    caption under its tile (key (row, col)) or under its whole row (key (row, None))."""
    grid = Image.new("RGB", layout.size, WHITE)
    draw = ImageDraw.Draw(grid)
    font = load_font(layout.tile)
    for (row, col), tile in tiles.items():
        grid.paste(tile.convert("RGB"), layout.box(row, col)[:2])
    for col, header in enumerate(headers):
        left = layout.box(0, col)[0]
        draw_text(draw, (left, GAP), header, font, layout.tile, 1, layout.tile)
    for (row, col), text in (captions or {}).items():
        left, _, right, bottom = layout.box(row, col or 0)
        width = right - left if col is not None else layout.size[0] - 2 * GAP
        draw_text(draw, (left, bottom + GAP // 2), text, font, width, caption_lines, layout.tile)
    return grid


# --- scenes ----------------------------------------------------------------------------------------


def scene_caption(seed: int, style: str) -> str:
    """The procedural caption of scene ``seed`` painted in ``style`` (what the model was trained on)."""
    return P.caption(P.sample_scene(seed), style, np.random.default_rng([seed, P.STYLES.index(style)]))


def scribble_image(seed: int, size: int) -> Image.Image:
    """The flat colour layout of scene ``seed``, as a person would draw it."""
    return Image.fromarray(P.render_scribble(P.sample_scene(seed), size), mode="RGB")


def _colour_word(scene: P.Scene, kind: str) -> str:
    if kind == "sky":
        return scene.sky
    if kind == "ground":
        return scene.ground
    return scene.of(kind)[0].colour


def region_prompt(scene: P.Scene, kind: str, style: str) -> str:
    """E.g. "a watercolor painting of purple mountains at sunset", "... of a white moon at night"."""
    name = P.region_name(scene, kind)
    noun = f"{_colour_word(scene, kind)} {name}"
    if not name.endswith("s"):  # sun, moon, lake, sea, river, field, house, tree, boat
        noun = f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"
    return f"{STYLE_PHRASE[style]} of {noun} {TIME_PHRASE[scene.time]}"


@dataclass
class RegionMap:
    """A scene's region map as painted: flat colours, each colour's prompt (None: background)."""

    image: Image.Image  # RGB, one distinct colour per region
    prompts: dict[str, str | None]  # '#rrggbb' -> prompt; None for the background
    names: dict[str, str]  # '#rrggbb' -> region name ("mountains", "lake", ...)
    labels: np.ndarray  # (H, W) region label per pixel (ids of procedural.LABEL_IDS)


def region_map(seed: int, style: str, size: int) -> RegionMap:
    """The region map of scene ``seed`` (procedural.render_region_map) as an RGB colour map with
    a colour -> prompt table: sky and ground are background, other regions get their own prompt."""
    scene = P.sample_scene(seed)
    labels, names, colours = P.render_region_map(scene, size)
    palette = np.zeros((max(colours) + 1, 3), np.uint8)
    for label, rgb in colours.items():
        palette[label] = rgb
    kinds = {v: k for k, v in P.LABEL_IDS.items()}
    prompts: dict[str, str | None] = {}
    for label, rgb in colours.items():
        kind = kinds[label]
        prompts[color_name(rgb)] = None if kind in BACKGROUND_KINDS else region_prompt(scene, kind, style)
    return RegionMap(Image.fromarray(palette[labels], mode="RGB"), prompts,
                     {color_name(colours[label]): names[label] for label in colours}, labels)


def _inner_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of a pixel of ``mask`` farthest from its border (where a name fits best)."""
    padded = np.pad(mask, 1)
    dist = np.zeros(padded.shape, np.int32)
    inside = padded.copy()
    while inside.any():  # peel the mask one pixel ring at a time (4-neighbour erosion)
        dist += inside
        inside = (inside & np.roll(inside, 1, 0) & np.roll(inside, -1, 0)
                  & np.roll(inside, 1, 1) & np.roll(inside, -1, 1))
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x) - 1, int(y) - 1


def _rgb(colour: str) -> np.ndarray:
    """'#rrggbb' -> [r, g, b]."""
    return np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])


def named_map(regions: RegionMap, tile: int) -> Image.Image:
    """The region map with each region's name written on it (regions too thin for text are left unnamed)."""
    image = regions.image.copy()
    draw = ImageDraw.Draw(image)
    font = load_font(tile)
    rgb = np.asarray(regions.image)
    for colour, name in regions.names.items():
        mask = np.all(rgb == _rgb(colour), axis=-1)
        if mask.sum() < (font_size(tile) * 2) ** 2:
            continue
        x, y = _inner_point(mask)
        half_w, half_h = font.getlength(name) / 2 + 1, font_size(tile) / 2 + 1
        x = min(max(x, half_w), image.width - half_w)  # keep the whole name on the tile
        y = min(max(y, half_h), image.height - half_h)
        light = float(np.dot(_rgb(colour), (0.299, 0.587, 0.114))) > 140  # luma: dark text on light colours
        draw.text((x, y), name, font=font, anchor="mm", fill=INK if light else WHITE,
                  stroke_width=1, stroke_fill=WHITE if light else INK)
    return image


def fusion_regions(regions: RegionMap) -> tuple[list[Region], list[str]]:
    """core Regions of the map (through the same parser as ``python -m core regions``), and warnings."""
    return regions_from_map(regions.image, regions.prompts)


# --- the grids -------------------------------------------------------------------------------------


def _image(engine: Engine, request: Any) -> Image.Image:
    """The request's first image; its warnings go to the log."""
    result = engine.run(request)
    for warning in result.warnings:
        log.warning("%s", warning)
    return result.images[0]


def prompt_grid(engine: Engine, prompts: Sequence[str] = PROMPTS, seeds: int = 2, *, size: int = 256,
                steps: int = 20, seed: int = 0, cols: int = 4) -> Image.Image:
    """Each prompt at seeds ``seed .. seed + seeds - 1``, in reading order, ``cols`` per row,
    each tile captioned with its prompt and seed (model's default scheduler, CFG 7.5)."""
    jobs = [(prompt, seed + k) for prompt in prompts for k in range(seeds)]
    layout = Layout(math.ceil(len(jobs) / cols), cols, size, caption=text_band(size, CAPTION_LINES))
    tiles, captions = {}, {}
    for i, (prompt, s) in enumerate(jobs):
        cell = divmod(i, cols)
        request = GenerationRequest(prompt=prompt, width=size, height=size, steps=steps, seed=s)
        tiles[cell] = _image(engine, request)
        captions[cell] = f"{prompt} (seed {s})"
    return compose(layout, tiles, captions=captions)


def scribble_grid(engine: Engine, scenes: Sequence[tuple[int, str]] = SCRIBBLE_SCENES, *, size: int = 256,
                  steps: int = 20, seed: int = 0) -> Image.Image:
    """Rows: scenes; columns: scribble, GradOP+ from it, text only (same prompt, seed, scheduler)."""
    layout = Layout(len(scenes), len(SCRIBBLE_HEADERS), size, header=text_band(size, 1),
                    caption=text_band(size, CAPTION_LINES))
    tiles, captions = {}, {}
    for row, (scene_seed, style) in enumerate(scenes):
        prompt, scribble = scene_caption(scene_seed, style), scribble_image(scene_seed, size)
        stroke = stroke_request(prompt, scribble, steps=steps, seed=seed)
        text = GenerationRequest(prompt=prompt, width=size, height=size, steps=steps, seed=seed,
                                 scheduler=stroke.scheduler, guidance_scale=stroke.guidance_scale)
        tiles.update({(row, 0): scribble, (row, 1): _image(engine, stroke), (row, 2): _image(engine, text)})
        captions[(row, None)] = f"{prompt} (scene {scene_seed}, seed {seed})"
    return compose(layout, tiles, SCRIBBLE_HEADERS, captions)


def region_grid(engine: Engine, scenes: Sequence[tuple[int, str]] = REGION_SCENES, *, size: int = 256,
                steps: int = 20, seed: int = 0) -> Image.Image:
    """Rows: scenes; columns: the named region map, MultiDiffusion from it (caption as the
    background prompt), text-to-image of the caption (same seed and scheduler)."""
    layout = Layout(len(scenes), len(REGION_HEADERS), size, header=text_band(size, 1),
                    caption=text_band(size, CAPTION_LINES))
    tiles, captions = {}, {}
    for row, (scene_seed, style) in enumerate(scenes):
        prompt, regions = scene_caption(scene_seed, style), region_map(scene_seed, style, size)
        found, warnings = fusion_regions(regions)
        for warning in warnings:
            log.warning("scene %d: %s", scene_seed, warning)
        fused = MultiDiffusionRequest(prompt=prompt, regions=tuple(found), kind="regions", width=size,
                                      height=size, steps=steps, seed=seed)
        text = GenerationRequest(prompt=prompt, width=size, height=size, steps=steps, seed=seed)
        tiles.update({(row, 0): named_map(regions, size), (row, 1): _image(engine, fused),
                      (row, 2): _image(engine, text)})
        captions[(row, None)] = f"{prompt} (scene {scene_seed}, seed {seed})"
    return compose(layout, tiles, REGION_HEADERS, captions)


GRIDS = {"prompts": prompt_grid, "scribble": scribble_grid, "regions": region_grid}


def write_grid(engine: Engine, name: str, out: Path, *, size: int = 256, steps: int = 20,
               seed: int = 0) -> tuple[Path, float]:
    """Write ``OUT/<name>.png`` (name: prompts, scribble or regions); (path, seconds it took)."""
    start = time.perf_counter()
    image = GRIDS[name](engine, size=size, steps=steps, seed=seed)
    path = out / f"{name}.png"
    try:
        out.mkdir(parents=True, exist_ok=True)
        image.save(path)
    except OSError as exc:
        raise StudioError(f"Could not write {path} ({exc.strerror or exc}): choose another --out folder.") from exc
    return path, time.perf_counter() - start


# --- command line ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m training.grids", description="Labelled sample grids for the README.")
    p.add_argument("--model", required=True, help="model folder or name under pretrained_models/")
    p.add_argument("--out", required=True, help="folder for prompts.png, scribble.png, regions.png")
    p.add_argument("--size", type=int, default=256, help="tile side in px, a multiple of 8 (default 256)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps per image (default 20)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--only", nargs="+", choices=GRID_NAMES, default=list(GRID_NAMES), help="grids to write")
    return p


class _Once(logging.Filter):
    """Lets each distinct message through once (every request repeats the model's warnings)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def _log_warnings_once() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    handler.addFilter(_Once())
    log.addHandler(handler)
    log.propagate = False
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already reported in one line
        return int(exc.code or 0)
    handler = _log_warnings_once()
    try:
        return _run(args)
    finally:
        log.removeHandler(handler)
        log.propagate = True


def check_args(args: argparse.Namespace) -> None:
    """StudioError for flags that would fail only after the model is loaded."""
    if args.size < 8:
        raise StudioError(f"--size must be at least 8 pixels, got {args.size}.")
    require_multiple_of(args.size, "--size")
    check_range("Steps", args.steps, 1, 1000)
    check_range("Seed", args.seed, 0, MAX_SEED - 1)  # the prompt grid also uses seed + 1
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise StudioError(f"--out {args.out} is a file: give a folder for the grids.")
    if args.threads is not None and args.threads < 1:
        raise StudioError(f"--threads must be at least 1, got {args.threads}.")


def _run(args: argparse.Namespace) -> int:
    try:
        check_args(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        engine = Engine.load(model=args.model, device=args.device)
        for name in dict.fromkeys(args.only):  # in the order given, once each
            path, seconds = write_grid(engine, name, Path(args.out), size=args.size, steps=args.steps,
                                       seed=args.seed)
            sys.stdout.write(f"{path}\t{seconds:.1f} s\n")
            sys.stdout.flush()
    except StudioError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
