"""Shifted-window panoramas (SpotDiffusion, Frolov et al. 2024, arXiv 2407.15507) as an eps_fn.

MultiDiffusion (``core.region_fusion``) evaluates overlapping views every step: at its
reference stride of window / 8 each latent pixel goes through the UNet up to 64 times per
step. SpotDiffusion instead tiles the canvas with NON-overlapping windows of the model's
native size and moves the tiling by a new offset (o_y, o_x) every step:

    eps_t = sum_i F_i^{-1}(Phi(F_i(z_t) | y)) / sum_i F_i^{-1}(1),   F_i = tiles of the grid shifted by o(t)

so a seam left by one step's tile borders lies inside a tile at the next step and is
denoised away; over the schedule no border stays put. Each pixel is evaluated about once
per step, which is the whole speed-up.

Adapted here:
- the tiles are :class:`core.region_fusion.View` objects and one step is an ordinary
  :class:`~core.region_fusion.RegionFusion` over them, so region prompts (paths with their
  weights), bootstrapping, the fast bounding-box crop and stroke guidance's step hooks
  compose with shifted windows exactly as with sliding ones;
- a 360-degree canvas wraps (the paper's torch.roll); a flat canvas does not: a tile that
  would cross the edge is moved inside it, so it overlaps its neighbour and the overlap is
  averaged (MultiDiffusion's fusion on that strip), which costs one extra tile per axis
  but never mixes the left edge's content into the right edge's;
- offsets are drawn per distinct timestep (a second-order solver's two evaluations of one
  step share them), from the request's seed ("random", as the paper) or stepping by
  ``stride`` latent pixels each step ("cyclic").
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from .errors import StudioError
from .region_fusion import Bootstrap, FusionPath, RegionFusion, View
from .sampling import ModelFn

SHIFTS = ("random", "cyclic")


def tile_starts(size: int, window: int, offset: int, wrap: bool) -> list[int]:
    """Starts of the windows of one shifted tiling of [0, size).

    ``wrap``: starts at ``offset`` every ``window`` around the circle (columns wrap), as many
    as cover the size. Otherwise the tiles of the grid shifted by ``offset`` that touch
    [0, size), each moved inside it (the first and last then overlap their neighbours).
    """
    if size <= window:
        return [0]
    count = -(-size // window)
    if wrap:
        return [(offset + k * window) % size for k in range(count)]
    offset %= window
    starts = range(offset - window if offset else 0, size, window)
    return sorted({min(max(0, s), size - window) for s in starts})


def shifted_views(height: int, width: int, window: int, offset: tuple[int, int], circular: bool) -> list[View]:
    """The views of one step: the canvas tiled by windows shifted by ``offset`` (rows, columns)."""
    if window < 1:
        raise StudioError(f"Window {window} is not valid: it must be at least 1 latent pixel.")
    view_h, view_w = min(window, height), min(window, width)
    tops = tile_starts(height, window, offset[0], wrap=False)
    lefts = tile_starts(width, window, offset[1], wrap=circular and width > window)
    return [View(top, left, view_h, view_w) for top in tops for left in lefts]


def step_offsets(timesteps: Iterable[Any], window: int, shift: str, seed: int, stride: int) -> dict[float, tuple[int, int]]:
    """The (row, column) offset of each distinct timestep, in order of the schedule."""
    if shift not in SHIFTS:
        raise StudioError(f"Unknown shift {shift!r}: use one of {', '.join(SHIFTS)}.")
    generator = torch.Generator("cpu").manual_seed(int(seed))
    offsets: dict[float, tuple[int, int]] = {}
    for t in timesteps:
        key = float(t)
        if key in offsets:
            continue
        if shift == "random":
            pair = torch.randint(window, (2,), generator=generator)
            offsets[key] = (int(pair[0]), int(pair[1]))
        else:
            o = (len(offsets) * stride) % window
            offsets[key] = (o, o)
    return offsets


def offset_at(offsets: dict[float, tuple[int, int]], t: Tensor | float) -> tuple[int, int]:
    """The offset of step ``t``; a timestep not in ``offsets`` (a solver's intermediate point)
    takes the offset of the nearest one above."""
    key = float(t)
    if key not in offsets:
        above = [k for k in sorted(offsets) if k >= key]
        key = above[0] if above else max(offsets)
    return offsets[key]


def views_by_step(height: int, width: int, window: int, offsets: dict[float, tuple[int, int]],
                  circular: bool = False) -> Callable[[Tensor | float], list[View]]:
    """t -> the tiling of step t (for eps_fns other than the fusion, e.g. one-pass regions)."""
    return lambda t: shifted_views(height, width, window, offset_at(offsets, t), circular)


class ShiftedWindows:
    """``eps_fn(z, t)``: one :class:`RegionFusion` over the tiles shifted by ``offsets[t]``.

    The fusions are built once per distinct offset and cached; a timestep that is not in
    ``offsets`` (a solver's intermediate point) uses the offset of the nearest one above.
    """

    def __init__(self, model_fn: ModelFn, embeddings: Tensor, paths: list[FusionPath], window: int,
                 offsets: dict[float, tuple[int, int]], *, circular: bool = False,
                 bootstrap: Bootstrap | None = None, batch_rows: int = 16, crop_padding: int | None = None,
                 align: int = 1) -> None:
        if not paths or not offsets:
            raise StudioError("Shifted windows need at least one prompt path and one step.")
        self.height, self.width = paths[0].weight.shape
        self.model_fn, self.embeddings, self.paths, self.window = model_fn, embeddings, paths, window
        self.offsets, self.circular, self.bootstrap = offsets, circular, bootstrap
        self.options = {"batch_rows": batch_rows, "crop_padding": crop_padding, "align": align}
        self._fusions: dict[tuple[int, int], RegionFusion] = {}

    def views(self, t: Tensor | float) -> list[View]:
        return shifted_views(self.height, self.width, self.window, self.offset(t), self.circular)

    def offset(self, t: Tensor | float) -> tuple[int, int]:
        return offset_at(self.offsets, t)

    def fusion(self, t: Tensor | float) -> RegionFusion:
        """The fusion of step ``t`` (built on first use)."""
        offset = self.offset(t)
        if offset not in self._fusions:
            views = shifted_views(self.height, self.width, self.window, offset, self.circular)
            self._fusions[offset] = RegionFusion(self.model_fn, self.embeddings, self.paths, views,
                                                 bootstrap=self.bootstrap, **self.options)
        return self._fusions[offset]

    def plan(self, bootstrapping: bool = False) -> Any:
        """The plan of the first step's tiling (benchmarks read its cost)."""
        return self.fusion(self._keys[-1]).plan(bootstrapping)

    @property
    def rows_run(self) -> int:
        return sum(f.rows_run for f in self._fusions.values())

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        return self.fusion(t)(z, t)
