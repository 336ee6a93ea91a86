"""CLIP models to guide with: load a transformers CLIP folder, embed images and texts.

A CLIP folder is what ``CLIPModel.save_pretrained`` writes plus its tokenizer:
``config.json``, ``model.safetensors`` (safetensors only: pickled ``pytorch_model.bin`` is
refused unopened), ``vocab.json``/``merges.txt`` (or ``tokenizer.json``) and optionally
``preprocessor_config.json`` (image size, mean, std). ``openai/clip-vit-base-patch32``
downloaded with its safetensors weights is one; ``pretrained_models/studio-clip`` (trained by
``python -m training.clip``) is the bundled one. A name that is not a folder is looked up
under ``pretrained_models/``, then as a hub id (``local_files_only`` unless the
``STUDIO_ALLOW_DOWNLOADS`` environment variable is set).

Features are computed through the towers and projections directly
(``visual_projection(vision_model(x).pooler_output)``), which every transformers version
since 4.x computes the same way.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import StudioError

DEFAULT_CLIP = "studio-clip"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "pretrained_models"
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
_CACHE: dict[tuple[str, str], "ClipGuide"] = {}
_LOCK = threading.Lock()


def _models_dir() -> Path:
    from .loading import models_dir

    return models_dir()


def resolve_clip(spec: str | None) -> Path | str:
    """The folder (or hub id) ``spec`` names, checked: config, safetensors weights, tokenizer."""
    spec = (spec or DEFAULT_CLIP).strip()
    path = Path(spec).expanduser()
    for root in (_models_dir(), BUNDLED_DIR):  # the models folder, then the models shipped with the studio
        if not path.exists() and (root / spec).exists():
            path = root / spec
    if not path.exists():
        if "/" in spec and not spec.startswith((".", "/")) and os.environ.get("STUDIO_ALLOW_DOWNLOADS"):
            return spec
        raise StudioError(f"CLIP model {spec} not found: give a CLIP folder in transformers format (for example "
                          f"`huggingface-cli download openai/clip-vit-base-patch32 --include '*.json' '*.txt' "
                          f"'*.safetensors' --local-dir pretrained_models/clip-vit-base-patch32`) or leave it "
                          f"empty for the bundled {DEFAULT_CLIP}.")
    if not path.is_dir():
        raise StudioError(f"CLIP model {spec} must be a folder (config.json, model.safetensors, tokenizer files).")
    if not (path / "config.json").exists():
        raise StudioError(f"CLIP folder {spec} has no config.json: it is incomplete; download the whole folder again.")
    if not any(path.glob("*.safetensors")):
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise StudioError(f"CLIP folder {spec} has only pickle weights (.bin); only safetensors are loaded "
                              "(pickles can run code). Download its model.safetensors instead.")
        raise StudioError(f"CLIP folder {spec} has no model.safetensors: it is incomplete; download the weights.")
    if not ((path / "vocab.json").exists() and (path / "merges.txt").exists()) and not (path / "tokenizer.json").exists():
        raise StudioError(f"CLIP folder {spec} has no tokenizer (vocab.json and merges.txt, or tokenizer.json): "
                          "download the tokenizer files too.")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise StudioError(f"CLIP folder {spec}: config.json is not readable JSON ({e}).") from None
    if not isinstance(config, dict) or config.get("model_type") != "clip":
        raise StudioError(f"CLIP folder {spec}: config.json is not a CLIP model's (model_type must be \"clip\").")
    return path


@dataclass
class ClipGuide:
    """A loaded CLIP model with its tokenizer and input size, frozen, for guidance."""

    model: Any  # transformers.CLIPModel
    tokenizer: Any
    image_size: int
    name: str
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def __post_init__(self) -> None:  # the normalisation as tensors on the model, made once
        self._mean = torch.tensor(self.mean, dtype=self.dtype, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.std, dtype=self.dtype, device=self.device).view(1, 3, 1, 1)

    def normalise(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) in [0, 1] on the model's device and dtype -> its input (resized, normalised)."""
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.image_size)
        return (x - self._mean) / self._std

    def image_features(self, x: Tensor) -> Tensor:
        """Unit-length embeddings of images (B, 3, H, W) in [0, 1] (differentiable)."""
        pixels = self.normalise(x.to(self.device, self.dtype))
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> Tensor:
        """Unit-length embeddings of texts (truncated to the model's context)."""
        limit = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))
        tok = self.tokenizer(list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt")
        out = self.model.text_model(input_ids=tok.input_ids.to(self.device),
                                    attention_mask=tok.attention_mask.to(self.device))
        return F.normalize(self.model.text_projection(out.pooler_output).float(), dim=-1)


def _image_settings(path: Path | str, config: Any) -> tuple[int, tuple, tuple]:
    size = int(config.vision_config.image_size)
    mean, std = MEAN, STD
    pre = Path(path) / "preprocessor_config.json" if isinstance(path, Path) else None
    if pre is not None and pre.exists():
        try:
            data = json.loads(pre.read_text(encoding="utf-8"))
            if isinstance(data.get("image_mean"), list) and len(data["image_mean"]) == 3:
                mean = tuple(float(v) for v in data["image_mean"])
            if isinstance(data.get("image_std"), list) and len(data["image_std"]) == 3:
                std = tuple(float(v) for v in data["image_std"])
        except (OSError, ValueError, TypeError):
            raise StudioError(f"CLIP folder {path}: preprocessor_config.json is not valid JSON with 3-value "
                              "image_mean/image_std.") from None
        if any(s <= 0 for s in std):
            raise StudioError(f"CLIP folder {path}: image_std must be positive.")
    return size, mean, std


def load_clip(spec: str | None = None, device: torch.device | str = "cpu") -> ClipGuide:
    """Load (once per spec and device) a CLIP folder for guidance; one-line errors."""
    location = resolve_clip(spec)
    key = (str(location), str(device))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        from transformers import CLIPModel, CLIPTokenizer

        local = not (isinstance(location, str) and os.environ.get("STUDIO_ALLOW_DOWNLOADS"))
        try:
            model = CLIPModel.from_pretrained(location, use_safetensors=True, local_files_only=local)
            tokenizer = CLIPTokenizer.from_pretrained(location, local_files_only=local)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise StudioError(f"CLIP model {spec or DEFAULT_CLIP} could not be loaded ({str(e).splitlines()[0]}); "
                              "check that the folder is a complete transformers CLIP download.") from None
        model = model.to(device).eval().requires_grad_(False)
        size, mean, std = _image_settings(location, model.config)
        guide = ClipGuide(model, tokenizer, size, str(spec or DEFAULT_CLIP), mean, std)
        _CACHE[key] = guide
        return guide
