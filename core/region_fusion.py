"""MultiDiffusion fusion (Bar-Tal et al., ICML 2023, arXiv 2302.08113) as an eps_fn wrapper.

The paper's step (eq. 5) fuses the per-path denoising steps in closed form:

    J_{t-1} = sum_i F_i^{-1}(W_i * Phi(F_i(J_t) | y_i)) / sum_j F_j^{-1}(W_j)

where F_i crops view i out of the canvas J, W_i is the path's per-pixel weight and Phi is
one step of the reference model. Every step we run (DDIM with eta = 0, Euler, DDPM's mean,
the linear multistep solvers) is *affine in eps* with coefficients that do not depend on
the pixel, so fusing the noise predictions with the same normalised weights and then
taking ONE scheduler step on the whole canvas gives the same J_{t-1} (tests prove it for
DDIM). That is what :class:`RegionFusion` does, so it is an ordinary ``eps_fn(z, t)`` that
the engine's one loop runs, and it composes with step hooks such as stroke guidance.

A *path* is a prompt with a latent-size weight map (a region, or the background with
W = clamp(1 - sum of region masks, 0)); a *view* is a window of the canvas (a panorama has
many, a small canvas one). Regions x views are one mechanism: every (view, path) pair whose
weight touches the view is a job. Jobs run batched through the model:
- rows (an input crop + one prompt embedding) are shared between jobs, so regions that see
  the same input and share a negative prompt share one unconditional pass;
- a path is evaluated only on the views its weight touches;
- with ``crop_padding`` set (the "fast" option) a job is evaluated on the padded bounding
  box of its weight inside the view instead of the whole view (approximate: the model
  sees less context; see :class:`RegionFusion`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import torch
from torch import Tensor

from .errors import StudioError
from .sampling import ModelFn

AlphaBarFn = Callable[[Tensor], Tensor]  # t -> abar_t (a 0-d tensor)


@dataclass(frozen=True)
class View:
    """F_i of the paper: rows top..top+height and columns left..left+width of the latent canvas.

    Columns wrap modulo the canvas width, so a circular (360-degree) panorama's views may
    run past the right edge and continue at the left one.
    """

    top: int
    left: int
    height: int
    width: int

    def columns(self, canvas_width: int) -> Tensor:
        """The canvas column of each of the view's columns, (width,) long."""
        return (self.left + torch.arange(self.width)) % canvas_width


@dataclass(frozen=True)
class FusionPath:
    """One diffusion path of the fusion: a prompt and its weight W_i over the canvas.

    ``cond``/``uncond`` index the embeddings table; ``uncond=None`` (or a scale <= 1) runs
    no unconditional pass. ``bootstrap_mask`` (h, w) in [0, 1] marks what the path keeps
    during bootstrapping (a foreground region's mask); None means it is never bootstrapped.
    """

    weight: Tensor  # (h, w) latent-size weight >= 0
    cond: int
    uncond: int | None = None
    guidance_scale: float = 1.0
    bootstrap_mask: Tensor | None = None  # (h, w)

    @property
    def uses_cfg(self) -> bool:
        return self.uncond is not None and self.guidance_scale > 1.0


@dataclass
class Bootstrap:
    """Bootstrapping (paper sec. 4.2): for the first steps, each foreground path's input
    outside its mask is replaced by a random constant colour noised to t with the initial
    noise: z' = m z + (1 - m)(sqrt(abar_t) c + sqrt(1 - abar_t) noise).
    """

    colors: Tensor  # (K, C): VAE latents of K random constant colours
    noise: Tensor  # (B, C, h, w): the initial noise
    timesteps: frozenset[float]  # the timesteps at which it applies
    alpha_bar: AlphaBarFn
    generator: torch.Generator = field(default_factory=lambda: torch.Generator("cpu").manual_seed(0))

    def active(self, t: Tensor | float) -> bool:
        return float(t) in self.timesteps


@dataclass(frozen=True)
class _Input:
    """A crop that goes into the model: a view, a rectangle in it, bootstrapped for a path or not."""

    view: int
    rect: tuple[int, int, int, int]  # (r0, r1, c0, c1) in view coordinates
    boot_path: int | None


@dataclass(frozen=True)
class _Row:
    input: int
    embedding: int


@dataclass
class _Job:
    """One (view, path) pair: its rows, and where and how much its eps counts."""

    path: int
    input: int
    cond: int  # row index
    uncond: int | None  # row index
    scale: float
    weight: Tensor  # (1, 1, hh, ww) normalised weight W_i / sum_j W_j on the crop


@dataclass
class _Plan:
    inputs: list[_Input]
    rows: list[_Row]
    jobs: list[_Job]
    batches: list[list[int]]  # row indices per model call (same crop shape)

    def pixels(self) -> int:
        """Latent pixels the model evaluates per step (per image): the plan's cost."""
        return sum(_area(self.inputs[r.input].rect) for r in self.rows)


def _area(rect: tuple[int, int, int, int]) -> int:
    return (rect[1] - rect[0]) * (rect[3] - rect[2])


@lru_cache(maxsize=4096)
def _columns(view: View, canvas_width: int, c0: int, c1: int) -> tuple[int, Tensor | None]:
    """(first canvas column, None) if the columns c0..c1 of the view do not wrap, else (0, indices)."""
    if view.left + c1 <= canvas_width:
        return view.left + c0, None
    return 0, view.columns(canvas_width)[c0:c1]


def crop_view(x: Tensor, view: View, rect: tuple[int, int, int, int] | None = None) -> Tensor:
    """F_i(x): the view's (B, C, height, width) crop of x (B, C, h, w), optionally a sub-rectangle."""
    r0, r1, c0, c1 = rect or (0, view.height, 0, view.width)
    rows = x[:, :, view.top + r0 : view.top + r1]
    start, cols = _columns(view, x.shape[-1], c0, c1)
    if cols is None:
        return rows[..., start : start + c1 - c0]
    return rows.index_select(3, cols.to(x.device))


def add_to_view(out: Tensor, values: Tensor, view: View, rect: tuple[int, int, int, int] | None = None) -> None:
    """out += F_i^{-1}(values): scatter-add a view's crop back onto the canvas, in place."""
    r0, r1, c0, c1 = rect or (0, view.height, 0, view.width)
    rows = out[:, :, view.top + r0 : view.top + r1]
    start, cols = _columns(view, out.shape[-1], c0, c1)
    if cols is None:
        rows[..., start : start + c1 - c0] += values.to(out.dtype)
    else:
        rows.index_add_(3, cols.to(out.device), values.to(out.dtype))


def fusion_weight_sum(paths: list[FusionPath], views: list[View]) -> Tensor:
    """sum_j F_j^{-1}(W_j) over every (view, path): the denominator of eq. 5, (h, w)."""
    h, w = paths[0].weight.shape
    total = torch.zeros(1, 1, h, w, dtype=torch.float64)
    for view in views:
        for path in paths:
            add_to_view(total, crop_view(path.weight[None, None].double(), view), view)
    return total[0, 0]


def _support_rect(weight: Tensor, padding: int | None, align: int) -> tuple[int, int, int, int] | None:
    """Rectangle (view coordinates) on which a job runs: the whole view, or the padded
    bounding box of the weight's support when ``padding`` is set; None if the weight is 0."""
    nonzero = weight > 0
    if not bool(nonzero.any()):
        return None
    h, w = weight.shape
    if padding is None:
        return 0, h, 0, w
    rows = torch.nonzero(nonzero.any(1)).flatten()
    cols = torch.nonzero(nonzero.any(0)).flatten()
    r0, r1 = _pad_span(int(rows[0]), int(rows[-1]) + 1, h, padding, align)
    c0, c1 = _pad_span(int(cols[0]), int(cols[-1]) + 1, w, padding, align)
    return r0, r1, c0, c1


def _pad_span(lo: int, hi: int, size: int, padding: int, align: int) -> tuple[int, int]:
    """[lo, hi) grown by ``padding`` each side and to a multiple of ``align``, inside [0, size)."""
    lo, hi = max(0, lo - padding), min(size, hi + padding)
    target = min(size, -(-(hi - lo) // align) * align)
    while hi - lo < target:
        if hi < size:
            hi += 1
        if hi - lo < target and lo > 0:
            lo -= 1
    return lo, hi


def _make_plan(paths: list[FusionPath], views: list[View], total: Tensor, bootstrapping: bool,
               padding: int | None, align: int, batch_rows: int) -> _Plan:
    """Jobs, deduplicated inputs and rows, and model batches for one kind of step."""
    inputs: dict[_Input, int] = {}
    rows: dict[_Row, int] = {}
    jobs: list[_Job] = []

    def index(table: dict, key: object) -> int:
        return table.setdefault(key, len(table))

    for v, view in enumerate(views):
        view_total = crop_view(total[None, None], view)[0, 0]
        for p, path in enumerate(paths):
            weight = crop_view(path.weight[None, None], view)[0, 0]
            rect = _support_rect(weight, padding, align)
            if rect is None:
                continue  # the path's weight does not touch this view: nothing to evaluate
            boot = p if bootstrapping and path.bootstrap_mask is not None else None
            i = index(inputs, _Input(v, rect, boot))
            r0, r1, c0, c1 = rect
            uncond = index(rows, _Row(i, path.uncond)) if path.uses_cfg else None
            cond = index(rows, _Row(i, path.cond))
            norm = (weight / view_total.clamp_min(1e-12))[r0:r1, c0:c1].float()
            jobs.append(_Job(p, i, cond, uncond, path.guidance_scale, norm[None, None]))
    input_list, row_list = list(inputs), list(rows)
    return _Plan(input_list, row_list, jobs, _batches(input_list, row_list, batch_rows))


def _batches(inputs: list[_Input], rows: list[_Row], batch_rows: int) -> list[list[int]]:
    """Row indices grouped by crop shape (one model call needs one shape), in chunks."""
    by_shape: dict[tuple[int, int], list[int]] = {}
    for r, row in enumerate(rows):
        r0, r1, c0, c1 = inputs[row.input].rect
        by_shape.setdefault((r1 - r0, c1 - c0), []).append(r)
    return [group[i : i + batch_rows] for group in by_shape.values() for i in range(0, len(group), batch_rows)]


class RegionFusion:
    """``eps_fn(z, t)`` of MultiDiffusion over ``views`` x ``paths`` (eq. 5, fused in eps).

    ``model_fn(z, t, embeddings) -> eps`` is the reference model Phi; ``embeddings`` is the
    (P, seq, dim) table the paths index. Each job's eps is classifier-free guided with its
    path's scale (Ho & Salimans eq. 6), multiplied by W_i / sum_j W_j and scattered back.

    ``batch_rows`` caps the rows (crop x prompt, per image) of one model call.
    ``crop_padding`` (fast option): evaluate each job on the bounding box of its weight in
    the view, grown by this many latent pixels (and to a multiple of ``align``, the UNet's
    downsampling factor). Exact for a pointwise model; for a real UNet the path no longer
    sees the canvas outside that box, so its content ignores distant context (weaker global
    coherence of lighting and scale) and pixels near the box edge see zero padding; a
    padding of ~1/8 of the window keeps the masked pixels away from that edge.
    """

    def __init__(self, model_fn: ModelFn, embeddings: Tensor, paths: list[FusionPath], views: list[View], *,
                 bootstrap: Bootstrap | None = None, batch_rows: int = 16, crop_padding: int | None = None,
                 align: int = 1) -> None:
        if not paths or not views:
            raise StudioError("Region fusion needs at least one prompt path and one view.")
        self.model_fn, self.embeddings, self.paths, self.views = model_fn, embeddings, paths, views
        self.bootstrap = bootstrap
        self.height, self.width = paths[0].weight.shape
        total = fusion_weight_sum(paths, views)
        if bool((total <= 0).any()):
            raise StudioError("Some latent pixels have no prompt weight (no view or region covers them): "
                              "give a background prompt or make the views cover the canvas.")
        batch_rows = max(1, int(batch_rows))
        self.plans = {boot: _make_plan(paths, views, total, boot, crop_padding, align, batch_rows)
                      for boot in (False, True)}
        self.rows_run = 0  # model rows evaluated so far (per image), for tests and benchmarks
        self._cache: dict[tuple, Tensor] = {}

    def plan(self, bootstrapping: bool = False) -> _Plan:
        return self.plans[bootstrapping]

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        bootstrapping = self.bootstrap is not None and self.bootstrap.active(t)
        plan = self.plans[bootstrapping]
        colors = self._pick_colors() if bootstrapping else None
        crops = [self._input(z, t, spec, colors) for spec in plan.inputs]
        row_eps = self._run_rows(plan, crops, t)
        out = torch.zeros_like(z)
        for job in plan.jobs:
            eps = row_eps[job.cond]
            if job.uncond is not None:
                eps_u = row_eps[job.uncond]
                eps = eps_u + job.scale * (eps - eps_u)
            spec = plan.inputs[job.input]
            add_to_view(out, eps * self._on(job.weight, z), self.views[spec.view], spec.rect)
        return out

    # --- pieces of a step ------------------------------------------------------------------

    def _on(self, tensor: Tensor, like: Tensor) -> Tensor:
        """A tensor this object keeps (weights, masks, noise) on ``like``'s device and dtype, cached."""
        key = (id(tensor), like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = tensor.to(like.device, like.dtype)
        return self._cache[key]

    def _pick_colors(self) -> dict[int, Tensor]:
        """A random constant colour latent (C,) per bootstrapped path, drawn for this step."""
        boot = self.bootstrap
        assert boot is not None
        picks = torch.randint(len(boot.colors), (len(self.paths),), generator=boot.generator)
        return {p: boot.colors[int(picks[p])] for p in range(len(self.paths))}

    def _input(self, z: Tensor, t: Tensor, spec: _Input, colors: dict[int, Tensor] | None) -> Tensor:
        view = self.views[spec.view]
        crop = crop_view(z, view, spec.rect)
        if spec.boot_path is None or colors is None or self.bootstrap is None:
            return crop
        mask = self.paths[spec.boot_path].bootstrap_mask
        assert mask is not None
        keep = crop_view(self._on(mask, z)[None, None], view, spec.rect)
        abar = self.bootstrap.alpha_bar(t).to(z.device, z.dtype)
        noise = crop_view(self._on(self.bootstrap.noise, z), view, spec.rect)
        color = colors[spec.boot_path].to(z.device, z.dtype)[None, :, None, None]
        background = abar.sqrt() * color + (1 - abar).sqrt() * noise
        return keep * crop + (1 - keep) * background

    def _run_rows(self, plan: _Plan, crops: list[Tensor], t: Tensor) -> list[Tensor]:
        """Model eps of every row, (B, C, hh, ww) each, with one call per batch."""
        out: list[Tensor] = [crops[0]] * len(plan.rows)
        n = crops[0].shape[0]
        for batch in plan.batches:
            rows = [plan.rows[r] for r in batch]
            z = torch.cat([crops[row.input] for row in rows])
            emb = torch.cat([self.embeddings[row.embedding : row.embedding + 1].expand(n, -1, -1) for row in rows])
            eps = self.model_fn(z, t, emb.to(z.device))
            for r, chunk in zip(batch, eps.split(n)):
                out[r] = chunk
            self.rows_run += len(rows)
        return out
