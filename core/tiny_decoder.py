"""A tiny decoder per model (diffusers' ``AutoencoderTiny``, the TAESD architecture), for fast
stroke guidance and live previews.

The full VAE decoder is most of the cost of GradOP+ (its gradient is taken through the
decoder at every optimisation step) and of previews. A tiny decoder maps the same *scaled*
latents z (what the UNet denoises) straight to an image in [-1, 1], about 1M parameters:

- for SD 1.x/2.x, Ollin Boer Bohan's TAESD weights (``madebyollin/taesd``, diffusers format)
  dropped into the model folder as ``vae_tiny/`` (or ``taesd/``), or into
  ``pretrained_models/taesd/`` for every model with 4 latent channels;
- for the bundled model, one distilled from its own VAE decoder by
  ``python -m training.tiny_decoder`` (which does the same for any model folder).

A tiny decoder is only used after a check that it agrees with the model's VAE on a few
images (colour fields that the VAE encodes): one made for another latent space (SDXL's, or
another model's) is ignored with a warning, so fast paths fall back to the linear map of
:mod:`core.latent_rgb`. Weights load from safetensors only.
"""
from __future__ import annotations

import logging
import threading
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import StudioError
from .latent_rgb import colour_fields

FOLDER_NAMES = ("vae_tiny", "taesd")  # inside a model folder
SHARED = Path(__file__).resolve().parent.parent / "pretrained_models"  # its taesd/ serves SD 1.x/2.x models
MAX_MEAN_ERROR = 0.12  # mean |tiny - VAE| on [0, 1] images above which a tiny decoder is refused
_CACHE: "weakref.WeakKeyDictionary[Any, tuple[Any, str | None]]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
log = logging.getLogger(__name__)


def candidate_folders(location: str | Path | None, shared: Path | None) -> list[Path]:
    """Where a model's tiny decoder may be: in its folder, then the shared ``taesd`` folder."""
    out: list[Path] = []
    if location is not None and Path(location).is_dir():
        out += [Path(location) / name for name in FOLDER_NAMES]
    if shared is not None:
        out.append(shared / "taesd")
    return [p for p in out if (p / "config.json").is_file()]


def load_tiny(folder: Path, device: torch.device, dtype: torch.dtype) -> Any:
    """An ``AutoencoderTiny`` from ``folder`` (safetensors only), or StudioError in one line."""
    from diffusers import AutoencoderTiny

    if not any(folder.glob("*.safetensors")):
        raise StudioError(f"{folder} has no .safetensors weights: convert them (the README says how); pickled "
                          "weights are never loaded.")
    try:
        model = AutoencoderTiny.from_pretrained(folder, use_safetensors=True, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise StudioError(f"{folder} is not a readable AutoencoderTiny folder ({type(exc).__name__}): "
                          "remove it or replace it with complete diffusers-format weights.") from exc
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def agreement(tiny: Any, vae: Any, count: int = 6, size: int = 64) -> float:
    """Mean |tiny(z) - VAE(z)| on [0, 1] images, z the VAE's scaled latents of colour fields."""
    param = next(vae.parameters())
    images = colour_fields(count, size, seed=1).to(param.device, param.dtype)
    scale = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    z = (vae.encode(images).latent_dist.mean - shift) * scale
    full = (vae.decode(z / scale + shift).sample.float() / 2 + 0.5).clamp(0, 1)
    small = (tiny.decode(z.to(next(tiny.parameters()).dtype)).sample.float() / 2 + 0.5).clamp(0, 1)
    return float((full - small).abs().mean())


def tiny_decoder(bundle: Any, shared: Path | None = SHARED) -> tuple[Any | None, str | None]:
    """(the model's checked tiny decoder or None, a warning or None), cached per VAE.
    ``shared``: the folder whose ``taesd/`` serves every model with 4 latent channels."""
    vae = bundle.vae
    with _LOCK:
        if vae in _CACHE:
            return _CACHE[vae]
        found: tuple[Any | None, str | None] = (None, None)
        location = bundle.location if bundle.source == "folder" else None
        for folder in candidate_folders(location, shared if int(vae.config.latent_channels) == 4 else None):
            try:
                tiny = load_tiny(folder, bundle.device, bundle.dtype)
                if int(tiny.config.latent_channels) != int(vae.config.latent_channels):
                    raise StudioError(f"{folder} decodes {tiny.config.latent_channels} latent channels, the "
                                      f"model has {vae.config.latent_channels}: it belongs to another model.")
                error = agreement(tiny, vae)
                if error > MAX_MEAN_ERROR:
                    raise StudioError(f"{folder} does not match this model's VAE (mean error {error:.2f}): "
                                      "ignored; distil one with python -m training.tiny_decoder.")
                found = (tiny, None)
                break
            except StudioError as exc:
                found = (None, str(exc))
        if found[1]:
            log.warning("%s", found[1])
        _CACHE[vae] = found
        return found


@torch.no_grad()
def tiny_preview(tiny: Any, latents: Tensor) -> Any:
    """latents[0] decoded by the tiny decoder, as a PIL image at full size."""
    from PIL import Image

    rgb = tiny_renderer(tiny)(latents[:1])[0]
    return Image.fromarray((rgb.permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8"))


def tiny_renderer(tiny: Any) -> Any:
    """R(z) = clamp((T(z) + 1) / 2, 0, 1) with gradients: the tiny decoder as a stroke renderer."""
    dtype = next(tiny.parameters()).dtype

    def render(latents: Tensor) -> Tensor:
        return (tiny.decode(latents.to(dtype)).sample.float() / 2 + 0.5).clamp(0, 1)

    return render
