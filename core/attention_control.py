"""Semantic control of painted regions: cross-attention "paint with words".

The GradOP paper (Singh et al., CVPR 2023: cross-attention correspondence) lets each colour
region of the scribble name words of the prompt; following eDiff-I's "paint-with-words"
(Balaji et al. 2022) those tokens' cross-attention logits get a positive bias inside their
region (eDiff-I writes softmax((Q K^T + W') / sqrt(d)), W' = w log(1 + sigma) max(Q K^T) A;
in scaled logits that is):

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + W) V,
    W[q, k] = w * log(1 + sigma_t) * max|Q K^T / sqrt(d)| * A[q, k]

with A[q, k] = 1 where query pixel q lies in a region that names token k (area-weighted at
each layer's resolution), sigma_t = sqrt((1 - abar_t) / abar_t) the noise level of the
step (stronger at high noise, when the layout forms) and the max taken per image and head
over the layer's logits, so one w means the same on every model. The bias applies to the
conditional rows of the UNet batch only (the unconditional prompt has no such words).

Implementation: attention processors installed on the UNet's cross-attention modules for
one request and restored afterwards (also on error), plus a forward pre-hook that reads
the timestep of each UNet call. Works with SD 1.x and 2.x (any ``Attention`` with
``is_cross_attention``) and uses PyTorch SDPA with the bias as its float mask; with w = 0
(or no conditional rows) the previous processor runs unchanged, so w = 0 equals no control
bit-exactly. The UNet is shared, so requests with semantic control must run one at a time:
:func:`semantic_attention` holds a lock while installed, and the app queues such requests.
"""
from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .colors import parse_color, to_rgb
from .errors import StudioError
from .sampling import alpha_bar

COLOUR_TOLERANCE = 40  # max per-channel difference (0..255) for a pixel to belong to a named colour
_INSTALL_LOCK = threading.Lock()  # one semantic-control request at a time per process


def colour_mask(strokes: Image.Image, colour: str, tolerance: int = COLOUR_TOLERANCE) -> np.ndarray:
    """(H, W) float mask of the painted pixels of ``strokes`` close to ``colour``."""
    rgba = np.asarray(strokes.convert("RGBA"), dtype=np.int16)
    target = np.array(to_rgb(parse_color(colour)), dtype=np.int16)
    near = np.abs(rgba[..., :3] - target).max(axis=-1) <= tolerance
    return (near & (rgba[..., 3] >= 128)).astype(np.float32)


def phrase_tokens(tokenizer: Any, prompt: str, phrase: str) -> list[int] | None:
    """Positions of ``phrase``'s tokens in the tokenised prompt (BOS at 0), or None if absent."""
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    piece = tokenizer(phrase, add_special_tokens=False).input_ids
    if not piece:
        return None
    for start in range(1, len(ids) - len(piece) + 1):
        if ids[start:start + len(piece)] == piece:
            return list(range(start, start + len(piece)))
    return None


def missing_words(tokenizer: Any, prompt: str, phrases: Sequence[str]) -> list[str]:
    """The phrases that do not occur in the (possibly truncated) prompt; for the app's check."""
    return [p for p in phrases if phrase_tokens(tokenizer, prompt, p) is None]


@dataclass
class WordRegion:
    """One colour region and the prompt tokens it names."""

    colour: str
    mask: Tensor  # (h, w) in [0, 1] at latent resolution
    tokens: list[int]  # positions in the prompt's token sequence


def word_regions(tokenizer: Any, prompt: str, strokes: Image.Image, words: Sequence[tuple[str, str]],
                 latent_size: tuple[int, int]) -> list[WordRegion]:
    """Regions of ``strokes`` for (colour, phrase) pairs, masks area-pooled to ``latent_size`` (h, w).

    Raises StudioError naming every phrase missing from the prompt, or a colour not painted.
    """
    missing = missing_words(tokenizer, prompt, [phrase for _, phrase in words])
    if missing:
        names = ", ".join(f"'{m}'" for m in dict.fromkeys(missing))
        raise StudioError(f"Words not in the prompt: {names}. Add them to the prompt or change the words file.")
    by_colour: dict[str, list[int]] = {}
    for colour, phrase in words:
        key = "#%02x%02x%02x" % to_rgb(parse_color(colour))
        by_colour.setdefault(key, []).extend(phrase_tokens(tokenizer, prompt, phrase) or [])
    regions = []
    for colour, tokens in by_colour.items():
        mask = torch.from_numpy(colour_mask(strokes, colour))
        if not mask.any():
            raise StudioError(f"Colour {colour} is not painted in the scribble: use a colour of the scribble "
                              "(within 40 per channel) or remove it from the words file.")
        pooled = F.adaptive_avg_pool2d(mask[None, None], latent_size)[0, 0]
        regions.append(WordRegion(colour, pooled, sorted(set(tokens))))
    return regions


def layer_grid(latent_size: tuple[int, int], queries: int) -> tuple[int, int]:
    """The (h, w) of the UNet layer of a ``latent_size`` input with ``queries`` pixels (each
    level halves, rounding up)."""
    h, w = latent_size
    for level in range(8):
        gh, gw = math.ceil(h / 2**level), math.ceil(w / 2**level)
        if gh * gw == queries:
            return gh, gw
    raise RuntimeError(f"no UNet level of a {h}x{w} latent has {queries} pixels")


@dataclass
class SemanticControl:
    """Shared state of the installed processors: regions, weight, current sigma, records."""

    regions: list[WordRegion]
    weight: float  # w of eDiff-I's paint-with-words bias
    latent_size: tuple[int, int]  # (h, w)
    cond: Tensor | None = None  # (1, seq, dim) prompt embeddings: rows equal to it get the bias
    record: bool = False  # keep per-layer attention mass of each region's tokens inside the region
    sigma: float = 0.0  # noise level of the current UNet call, set by the pre-hook
    records: list[dict[str, Any]] = field(default_factory=list)
    _bases: dict[tuple[int, int], Tensor] = field(default_factory=dict, repr=False)

    @property
    def strength(self) -> float:
        """w * log(1 + sigma_t): the bias in units of the layer's largest logit."""
        return self.weight * math.log1p(self.sigma)

    def grid(self, queries: int) -> tuple[int, int]:
        return layer_grid(self.latent_size, queries)

    def masks(self, queries: int) -> Tensor:
        """(R, queries) region masks at the layer's resolution (area-weighted)."""
        stack = torch.stack([r.mask for r in self.regions])[:, None]  # (R, 1, h, w)
        return F.adaptive_avg_pool2d(stack, self.grid(queries)).flatten(1)

    def base(self, queries: int, keys: int, device: torch.device) -> Tensor:
        """A[q, k] of the bias: (queries, keys), 1 where q is in a region naming token k (area-weighted)."""
        key = (queries, keys)
        if key not in self._bases:
            masks = self.masks(queries)
            onehot = torch.zeros(len(self.regions), keys)
            for i, region in enumerate(self.regions):
                onehot[i, [k for k in region.tokens if k < keys]] = 1.0
            self._bases[key] = (masks.T @ onehot).clamp(max=1.0)
        return self._bases[key].to(device)

    def cond_rows(self, encoder_hidden_states: Tensor) -> Tensor:
        """(B,) bool: the batch rows conditioned on the prompt (not the negative prompt)."""
        if self.cond is None:
            return torch.ones(len(encoder_hidden_states), dtype=torch.bool, device=encoder_hidden_states.device)
        cond = self.cond.to(encoder_hidden_states.device, encoder_hidden_states.dtype)
        return (encoder_hidden_states == cond).flatten(1).all(dim=1)


def attention_with_bias(attn: Any, hidden_states: Tensor, context: Tensor, attention_mask: Tensor | None,
                        temb: Tensor | None, bias_fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """diffusers' AttnProcessor2_0 with ``bias_fn(query, key)`` (float, broadcastable to
    (B, heads, queries, keys)) added to the scaled logits."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        batch, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
    batch, keys = context.shape[0], context.shape[1]
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    key, value = attn.to_k(context), attn.to_v(context)
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    bias = bias_fn(query, key)  # (B, heads, queries, keys)
    if attention_mask is not None:
        mask = attn.prepare_attention_mask(attention_mask, keys, batch)
        bias = bias + mask.view(batch, attn.heads, -1, mask.shape[-1])
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias.to(query.dtype), dropout_p=0.0,
                                         is_causal=False, scale=attn.scale)
    out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    if input_ndim == 4:
        out = out.transpose(-1, -2).reshape(batch, channel, height, width)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


class PaintWithWordsProcessor:
    """Cross-attention with eDiff-I's region bias W; otherwise the previous processor."""

    def __init__(self, control: SemanticControl, previous: Any, name: str) -> None:
        self.control, self.previous, self.name = control, previous, name

    def __call__(self, attn: Any, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None) -> Tensor:
        rows = None if encoder_hidden_states is None else self.control.cond_rows(encoder_hidden_states)
        idle = self.control.weight == 0 and not self.control.record  # records need the explicit path
        if rows is None or not bool(rows.any()) or not self.control.regions or idle:
            extra = {} if temb is None else {"temb": temb}
            return self.previous(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=attention_mask, **extra)
        return attention_with_bias(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                                   lambda query, key: self._bias(attn, query, key, rows))

    def _bias(self, attn: Any, query: Tensor, key: Tensor, rows: Tensor) -> Tensor:
        """The bias W for the conditional rows (zero elsewhere), float32: (B, heads, queries, keys)."""
        control = self.control
        logits = (query.float() @ key.float().transpose(-1, -2)) * attn.scale  # (B, heads, Q, K)
        scale = logits.abs().amax(dim=(-2, -1), keepdim=True)
        base = control.base(logits.shape[-2], logits.shape[-1], logits.device)
        bias = control.strength * scale * base * rows.to(logits.dtype)[:, None, None, None]
        if control.record:
            self._record(torch.softmax(logits + bias, dim=-1), rows)
        return bias

    def _record(self, probs: Tensor, rows: Tensor) -> None:
        """Mean attention mass of each region's tokens over the region's pixels (conditional rows)."""
        masks = self.control.masks(probs.shape[-2]).to(probs.device)  # (R, Q)
        cond = probs[rows].mean(dim=(0, 1))  # (Q, K)
        mass = []
        for region, mask in zip(self.control.regions, masks):
            per_query = cond[:, region.tokens].sum(dim=-1)
            mass.append(float((per_query * mask).sum() / mask.sum().clamp_min(1e-8)))
        self.control.records.append({"layer": self.name, "queries": probs.shape[-2], "sigma": self.control.sigma,
                                     "mass": mass})


def cross_attention_modules(unet: Any) -> list[tuple[str, Any]]:
    """(name, module) of every cross-attention layer of a diffusers UNet."""
    return [(name, module) for name, module in unet.named_modules()
            if getattr(module, "is_cross_attention", False) and hasattr(module, "set_processor")]


def _sigma_hook(control: SemanticControl, scheduler: Any) -> Any:
    """A UNet forward pre-hook that sets ``control.sigma`` from the call's timestep."""

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        t = t.flatten()[0] if isinstance(t, Tensor) else t
        abar = float(alpha_bar(scheduler, t))
        control.sigma = math.sqrt((1 - abar) / abar)

    return hook


@contextmanager
def semantic_attention(unet: Any, control: SemanticControl, scheduler: Any) -> Iterator[SemanticControl]:
    """Install paint-with-words processors on ``unet`` for the block; restore them after (also on error).

    ``scheduler`` gives the training schedule (``alphas_cumprod``) that turns each UNet
    call's timestep into sigma_t.
    """
    modules = cross_attention_modules(unet)
    with _INSTALL_LOCK:
        previous = [(module, module.processor) for _, module in modules]
        handle = unet.register_forward_pre_hook(_sigma_hook(control, scheduler), with_kwargs=True)
        try:
            for (name, module), (_, old) in zip(modules, previous):
                module.set_processor(PaintWithWordsProcessor(control, old, name))
            yield control
        finally:
            handle.remove()
            for module, old in previous:
                module.set_processor(old)
