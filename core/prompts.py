"""Prompt -> text embeddings, as diffusers' StableDiffusionPipeline.encode_prompt does."""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor

SHARED_CACHE_SIZE = 64  # prompts kept per text encoder across requests (live mode re-sends the same ones)
_SHARED: "weakref.WeakKeyDictionary[Any, OrderedDict[tuple[Any, ...], tuple[Tensor, str | None]]]" = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


class PromptEncoder:
    """Encodes prompts for one request, each distinct text once.

    Prompts longer than the tokenizer's limit are truncated (as SD was trained) and a
    warning names the dropped words, so nothing is cut silently. Encodings are also kept
    across requests, per text encoder (the newest SHARED_CACHE_SIZE prompts): a live preview
    that changes only the drawing does not run the text encoder again. Every request gets
    its own copy, so nothing a request does to its embeddings reaches another.
    """

    def __init__(self, tokenizer: Any, text_encoder: Any, device: torch.device, image_tokens: Any = None) -> None:
        self.tokenizer, self.text_encoder, self.device = tokenizer, text_encoder, device
        self.image_tokens = image_tokens  # core.ip_adapter.ImageTokens: appended to every embedding (IP-Adapter)
        self.warnings: list[str] = []
        self._cache: dict[str, Tensor] = {}

    def __call__(self, text: str, region: Any = None) -> Tensor:
        """(1, seq, dim) embeddings of ``text`` as a positive prompt (of ``region``, for its own
        IP-Adapter image prompt); with image tokens, they follow the text's."""
        if self.image_tokens is None:
            return self.text(text)
        return torch.cat([self.text(text), self.image_tokens.for_region(region).to(self.device)], dim=1)

    def negative(self, text: str) -> Tensor:
        """(1, seq, dim) embeddings of ``text`` as a negative prompt (the unconditional image tokens)."""
        if self.image_tokens is None:
            return self.text(text)
        return torch.cat([self.text(text), self.image_tokens.negative.to(self.device)], dim=1)

    def text(self, text: str) -> Tensor:
        """(1, seq, dim) text embeddings alone."""
        if text not in self._cache:
            self._cache[text] = self._shared(text)
        return self._cache[text]

    def _weights_key(self) -> tuple[Any, ...]:
        """What the encoding depends on besides the text: the tokenizer, and the weights'
        device, dtype and version (in-place changes such as training steps bump it)."""
        params = list(self.text_encoder.parameters())
        first = params[0] if params else None
        return (id(self.tokenizer), str(self.device), getattr(first, "dtype", None), getattr(first, "device", None),
                sum(p._version for p in params))

    def _shared(self, text: str) -> Tensor:
        key = (text, self._weights_key())
        with _SHARED_LOCK:
            cache = _SHARED.setdefault(self.text_encoder, OrderedDict())
            hit = cache.get(key)
            if hit is not None:
                cache.move_to_end(key)
        if hit is None:
            warnings_before = len(self.warnings)
            hit = (self._encode(text), self.warnings[-1] if len(self.warnings) > warnings_before else None)
            with _SHARED_LOCK:
                cache[key] = hit
                while len(cache) > SHARED_CACHE_SIZE:
                    cache.popitem(last=False)
        elif hit[1] is not None:
            self.warnings.append(hit[1])
        return hit[0].clone()

    def _encode(self, text: str) -> Tensor:
        tok = self.tokenizer
        inputs = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        full = tok(text, padding="longest", return_tensors="pt").input_ids
        if full.shape[-1] > inputs.input_ids.shape[-1]:
            dropped = tok.batch_decode(full[:, tok.model_max_length - 1 : -1])[0]
            self.warnings.append(f"Prompt too long for the model ({tok.model_max_length - 2} tokens); "
                                 f"this part was dropped: '{dropped}'. Shorten the prompt to keep it.")
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = inputs.attention_mask.to(self.device)
        with torch.no_grad():
            embeddings = self.text_encoder(inputs.input_ids.to(self.device), attention_mask=mask)[0]
        return embeddings.to(dtype=self.text_encoder.dtype)
