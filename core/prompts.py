"""Prompt -> text embeddings, as diffusers' StableDiffusionPipeline.encode_prompt does."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class PromptEncoder:
    """Encodes prompts for one request, each distinct text once.

    Prompts longer than the tokenizer's limit are truncated (as SD was trained) and a
    warning names the dropped words, so nothing is cut silently.
    """

    def __init__(self, tokenizer: Any, text_encoder: Any, device: torch.device) -> None:
        self.tokenizer, self.text_encoder, self.device = tokenizer, text_encoder, device
        self.warnings: list[str] = []
        self._cache: dict[str, Tensor] = {}

    def __call__(self, text: str) -> Tensor:
        """(1, seq, dim) embeddings of ``text``."""
        if text not in self._cache:
            self._cache[text] = self._encode(text)
        return self._cache[text]

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
