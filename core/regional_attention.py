"""One-pass region prompts: regional cross-attention, as an ``eps_fn``.

MultiDiffusion (``core.region_fusion``) runs the UNet once per prompt path and fuses the
noise predictions; with three regions and a background that is five UNet rows a step
against text-to-image's two. Krita AI Diffusion and InvokeAI instead give each region its
prompt inside ONE UNet pass, through the cross-attention layers. Here every cross-attention
layer sees the P prompts' tokens concatenated (P x seq keys: the background's and each
region's) and a query pixel q weights prompt p's tokens by w_p(q), the path's weight
W_p / sum_j W_j (``core.panorama.build_paths``: the region masks, the background where no
region is) pooled to the layer's resolution:

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + log w(q, k)) V,   w(q, k) = w_{p(k)}(q),

    which is  sum_p [w_p(q) Z_p(q) / sum_j w_j(q) Z_j(q)] Attention_p(q)

with Z_p(q) = sum over p's tokens of exp(logit): a per-pixel mixture of each prompt's own
cross-attention, weighted by its mask and by how strongly the pixel attends to it. Where a
mask is 0 the pixel never sees that prompt (hard masks: each pixel reads only its own
prompt); lower-resolution layers see area-averaged masks, so edges are soft there (and at
every layer with ``soft_masks``/``feather``). With every prompt equal it is exactly plain
cross-attention, since the weights sum to 1 (a test checks it).

The unconditional rows see the paths' negative prompts in the same layout, and classifier-
free guidance uses a per-pixel scale, sum_p w_p s_p (a region's own ``guidance_scale``).
Views (panorama windows, sliding or shifted) are evaluated one row pair each and averaged
where they overlap, as MultiDiffusion does with one full-canvas path. There is no
bootstrapping (it is a device of the fusion's separate paths). The UNet is shared: the
processors are installed for each call under a lock and always removed.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .attention_control import attention_with_bias, cross_attention_modules, layer_grid
from .errors import StudioError
from .region_fusion import FusionPath, View, add_to_view, crop_view
from .sampling import ModelFn

ViewsFn = Callable[[Tensor], Sequence[View]]
_LOCK = threading.RLock()  # one installation at a time per process (the UNet is shared)
_FLOOR = 1e-20  # weights are clamped here before the log: exp(log(1e-20)) adds nothing in float32


class RegionalControl:
    """What the processors read during one UNet call: each row's prompt weights."""

    def __init__(self, prompts: int, seq: int) -> None:
        self.prompts, self.seq = prompts, seq
        self.weights: Tensor | None = None  # (B, P, hh, ww) per row, sums to 1 over P
        self._bias: dict[int, Tensor] = {}

    @property
    def keys(self) -> int:
        return self.prompts * self.seq

    def set_rows(self, weights: Tensor | None, bias_cache: dict[int, Tensor] | None = None) -> None:
        """The rows' weights for the next UNet call; ``bias_cache`` keeps their per-layer biases
        between calls with the same rows (the eps_fn passes one per batch of views)."""
        self.weights, self._bias = weights, ({} if bias_cache is None else bias_cache)

    def applies(self, context: Tensor | None) -> bool:
        """Whether a cross-attention call is one of ours (its context has P x seq keys per row)."""
        w = self.weights
        return context is not None and w is not None and context.shape[1] == self.keys and context.shape[0] == len(w)

    def bias(self, queries: int, device: torch.device) -> Tensor:
        """(B, 1, queries, P x seq): log of each row's prompt weights at the layer's resolution."""
        if queries not in self._bias:
            assert self.weights is not None
            grid = layer_grid(tuple(self.weights.shape[-2:]), queries)
            pooled = F.adaptive_avg_pool2d(self.weights.float(), grid).flatten(2)  # (B, P, Q)
            logw = pooled.clamp_min(_FLOOR).log().transpose(1, 2)  # (B, Q, P)
            self._bias[queries] = logw.repeat_interleave(self.seq, dim=-1)[:, None].to(device)
        return self._bias[queries]


class RegionalAttentionProcessor:
    """Cross-attention with the regional weights on our calls; the previous processor otherwise."""

    def __init__(self, control: RegionalControl, previous: Any) -> None:
        self.control, self.previous = control, previous

    def __call__(self, attn: Any, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None) -> Tensor:
        if not self.control.applies(encoder_hidden_states):
            extra = {} if temb is None else {"temb": temb}
            return self.previous(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=attention_mask, **extra)
        assert encoder_hidden_states is not None
        return attention_with_bias(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                                   lambda query, key: self.control.bias(query.shape[-2], query.device))


@contextmanager
def regional_processors(unet: Any, control: RegionalControl) -> Iterator[None]:
    """Install the regional processors on ``unet``'s cross-attention layers for the block."""
    modules = cross_attention_modules(unet)
    if not modules:
        raise StudioError("One-pass regions need a UNet with cross-attention layers: use the fusion modes.")
    with _LOCK:
        previous = [(module, module.processor) for _, module in modules]
        try:
            for module, old in previous:
                module.set_processor(RegionalAttentionProcessor(control, old))
            yield
        finally:
            for module, old in previous:
                module.set_processor(old)


class RegionalAttention:
    """``eps_fn(z, t)``: every prompt path in one UNet pass per view (see the module docstring).

    ``paths`` and ``embeddings`` are MultiDiffusion's (``core.panorama.fusion_setup``);
    ``views`` a fixed list or a function of the timestep (shifted windows). ``batch_rows``
    caps the rows (view x CFG half, per image) of one model call.
    """

    def __init__(self, model_fn: ModelFn, unet: Any, embeddings: Tensor, paths: list[FusionPath],
                 views: Sequence[View] | ViewsFn, *, batch_rows: int = 16) -> None:
        if not paths:
            raise StudioError("One-pass regions need at least one prompt path.")
        weights = torch.stack([p.weight.float() for p in paths])  # (P, h, w)
        total = weights.sum(0)
        if bool((total <= 0).any()):
            raise StudioError("Some latent pixels have no prompt weight: give a background prompt.")
        self.model_fn, self.unet = model_fn, unet
        self.weights = weights / total  # w_p(q): sums to 1 over the paths
        self.cfg = any(p.uses_cfg for p in paths)
        scales = torch.tensor([p.guidance_scale if p.uses_cfg else 1.0 for p in paths])
        self.scale = (self.weights * scales[:, None, None]).sum(0)  # (h, w) per-pixel CFG scale
        self.cond = torch.cat([embeddings[p.cond] for p in paths])[None]  # (1, P*seq, dim)
        self.uncond = torch.cat([embeddings[p.uncond if p.uses_cfg and p.uncond is not None else p.cond]
                                 for p in paths])[None]
        self.control = RegionalControl(len(paths), embeddings.shape[1])
        self.views = views
        self.batch_views = max(1, int(batch_rows) // (2 if self.cfg else 1))
        self.halves = [self.uncond, self.cond] if self.cfg else [self.cond]
        self.rows_run = 0  # model rows evaluated so far (per image), for tests and benchmarks
        # per batch of views: weights, biases, context, scale (sliding views repeat every step)
        self._row_cache: dict[tuple, dict[str, Any]] = {}

    def views_at(self, t: Tensor) -> list[View]:
        return list(self.views(t) if callable(self.views) else self.views)

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        n = z.shape[0]
        views = self.views_at(t)
        out, count = torch.zeros_like(z), torch.zeros_like(z[:1, :1])
        halves = len(self.halves)
        with regional_processors(self.unet, self.control):
            for batch in self._batches(views):
                rows = self._rows([views[v] for v in batch], n, z)
                crops = torch.cat([crop_view(z, views[v]) for v in batch])  # (V*n, C, hh, ww)
                self.control.set_rows(rows["weights"], rows["bias"])
                try:
                    eps = self.model_fn(torch.cat([crops] * halves), t, rows["context"])
                finally:
                    self.control.set_rows(None)
                self.rows_run += len(batch) * halves
                if self.cfg:
                    eps_u, eps_c = eps.chunk(2)
                    eps = eps_u + rows["scale"] * (eps_c - eps_u)
                for i, v in enumerate(batch):
                    add_to_view(out, eps[i * n:(i + 1) * n], views[v])
                    add_to_view(count, torch.ones_like(eps[:1, :1]), views[v])
        return out / count

    def _rows(self, views: list[View], n: int, like: Tensor) -> dict[str, Any]:
        """What a batch of views needs besides the latents, built once per (views, images, device,
        dtype): the rows' prompt weights and their per-layer biases, the context, the CFG scale."""
        key = (tuple(views), n, like.device, like.dtype)
        if callable(self.views):  # shifted tilings rarely repeat: keep only the current one
            self._row_cache = {k: v for k, v in self._row_cache.items() if k == key}
        if key not in self._row_cache:
            weights, scale = self.weights.to(like.device, like.dtype)[None], self.scale.to(like.device, like.dtype)
            rows_w = torch.cat([crop_view(weights, v).expand(n, -1, -1, -1) for v in views])
            count = len(views) * n
            self._row_cache[key] = {
                "weights": torch.cat([rows_w] * len(self.halves)), "bias": {},
                "context": torch.cat([h.to(like.device, like.dtype).expand(count, -1, -1) for h in self.halves]),
                "scale": torch.cat([crop_view(scale[None, None], v) for v in views]).repeat_interleave(n, dim=0)}
        return self._row_cache[key]

    def _batches(self, views: list[View]) -> list[list[int]]:
        """View indices per model call: same crop shape, at most ``batch_views`` each."""
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, view in enumerate(views):
            by_shape.setdefault((view.height, view.width), []).append(i)
        return [group[i:i + self.batch_views] for group in by_shape.values()
                for i in range(0, len(group), self.batch_views)]
