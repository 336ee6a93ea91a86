"""Load Stable Diffusion class models: a diffusers folder, a hub id, or one .safetensors file.

Safetensors only (``use_safetensors=True``): pickled ``.bin``/``.ckpt`` weights are refused,
and no remote code is ever run. Loaded models are cached by their :class:`LoadOptions` and
shared; requests never change them (each request builds its own scheduler and generator).
"""
from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline

from .devices import dtype_name, pick_device, pick_dtype
from .errors import StudioError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_NAME = "studio-demo"  # the bundled demo model's folder under pretrained_models/
REQUIRED_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHTED_PARTS = ("unet", "vae", "text_encoder")
HOW_TO_GET_WEIGHTS = (
    "see the README section 'Use a real Stable Diffusion model' "
    "(e.g. `huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 --include '*.json' "
    "'*.txt' '*.safetensors' --exclude '*ema*' --local-dir pretrained_models/sd15`)"
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def models_dir() -> Path:
    """Where model folders are looked up by name (``STUDIO_MODELS_DIR`` overrides)."""
    return Path(os.environ.get("STUDIO_MODELS_DIR", REPO_ROOT / "pretrained_models"))


@dataclass(frozen=True)
class LoadOptions:
    """What to load and how. Equal options share one cached model."""

    model: str | None = None  # folder path, name under pretrained_models/, hub id, or .safetensors file
    device: str | None = None  # auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps
    dtype: str | None = None  # auto (fp16 on CUDA, fp32 elsewhere), fp32, fp16, bf16
    attention_slicing: bool = False  # lower peak memory in attention, a little slower
    vae_tiling: bool = False  # decode/encode large images tile by tile
    cpu_offload: bool = False  # keep models on the CPU, move each to the GPU while it runs
    config: str | None = None  # for a single .safetensors file: a diffusers folder with the configs

    def __post_init__(self) -> None:
        for name in ("model", "device", "dtype", "config"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
            elif value is not None and not isinstance(value, str):
                raise StudioError(f"Load option {name} must be text (or None), got {value!r:.40}.")
        for name in ("attention_slicing", "vae_tiling", "cpu_offload"):
            if not isinstance(getattr(self, name), bool):
                raise StudioError(f"Load option {name} must be true or false, got {getattr(self, name)!r:.40}.")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "LoadOptions":
        """LoadOptions(**kwargs), with a StudioError naming an unknown option."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise StudioError(f"Unknown load option(s) {', '.join(unknown)}: use {', '.join(sorted(known))}.")
        return cls(**kwargs)


@dataclass
class ModelBundle:
    """The loaded components of one model. Shared between requests: treat as read-only."""

    name: str
    source: str  # "folder", "hub" or "single_file"
    location: str
    pipeline: StableDiffusionPipeline = field(repr=False)
    device: torch.device
    dtype: torch.dtype
    options: LoadOptions
    warnings: tuple[str, ...] = ()

    @property
    def unet(self) -> Any:
        return self.pipeline.unet

    @property
    def vae(self) -> Any:
        return self.pipeline.vae

    @property
    def text_encoder(self) -> Any:
        return self.pipeline.text_encoder

    @property
    def tokenizer(self) -> Any:
        return self.pipeline.tokenizer

    @property
    def scheduler_config(self) -> dict[str, Any]:
        return dict(self.pipeline.scheduler.config)

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler_config.get("prediction_type", "epsilon"))

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_size(self) -> int:
        """The image side the UNet was trained at (512 for SD 1.x, 768 for SD 2.x-v)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    def info(self) -> dict[str, Any]:
        return {
            "model": self.name, "source": self.source, "location": self.location,
            "device": str(self.device), "dtype": dtype_name(self.dtype),
            "prediction_type": self.prediction_type, "native_size": self.native_size,
            "scheduler": self.scheduler_config.get("_class_name"),
            "attention_slicing": self.options.attention_slicing, "vae_tiling": self.options.vae_tiling,
            "cpu_offload": self.options.cpu_offload and self.device.type != "cpu",
        }


def available_models(root: Path | None = None) -> list[str]:
    """Names of the model folders under ``pretrained_models/`` (those with model_index.json)."""
    root = root or models_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "model_index.json").is_file())


def default_model() -> str:
    """The bundled demo model if present, else the first folder model; StudioError if none."""
    names = available_models()
    if DEFAULT_MODEL_NAME in names:
        return DEFAULT_MODEL_NAME
    if names:
        return names[0]
    raise StudioError(f"No model found in {models_dir()}: put a diffusers-format model folder there, or choose a "
                      f"model by path or hub id; {HOW_TO_GET_WEIGHTS}.")


def resolve_model(model: str | None) -> tuple[str, str]:
    """(source, location) for a model spec: folder, single_file or hub."""
    spec = (model or default_model()).strip()
    path = Path(spec).expanduser()
    if path.suffix in (".ckpt", ".bin", ".pt", ".pth"):
        raise StudioError(f"{spec} is a pickle checkpoint; only .safetensors weights are loaded (pickles can run "
                          "code). Convert it to .safetensors or use the diffusers folder of the same model.")
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise StudioError(f"Checkpoint file {spec} not found: check the path.")
        return "single_file", str(path.resolve())
    if path.is_dir():
        return "folder", str(path.resolve())
    named = models_dir() / spec
    if named.is_dir():
        return "folder", str(named.resolve())
    if _HUB_ID.match(spec) and not Path(spec.split("/")[0]).is_dir():
        return "hub", spec  # 'org/name', unless 'org' is a local folder (then it is a missing path)
    have = ", ".join(available_models()) or "none"
    raise StudioError(f"Model '{spec}' not found: not a folder, not a name under {models_dir()} (found: {have}) "
                      f"and not a hub id like 'org/name'; {HOW_TO_GET_WEIGHTS}.")


def check_model_folder(folder: Path) -> None:
    """Raise StudioError naming every missing piece of a diffusers-format SD folder."""
    if not (folder / "model_index.json").is_file():
        raise StudioError(f"{folder} is not a diffusers-format model folder (model_index.json is missing); "
                          f"{HOW_TO_GET_WEIGHTS}.")
    missing: list[str] = []
    pickles: list[str] = []
    for part in REQUIRED_PARTS:
        sub = folder / part
        if not sub.is_dir():
            missing.append(f"{part}/")
            continue
        config = "scheduler_config.json" if part == "scheduler" else "config.json"
        if part == "tokenizer":
            if not ((sub / "vocab.json").is_file() and (sub / "merges.txt").is_file()) and not (sub / "tokenizer.json").is_file():
                missing.append(f"{part}/vocab.json+merges.txt")
        elif not (sub / config).is_file():
            missing.append(f"{part}/{config}")
        if part in WEIGHTED_PARTS and not any(sub.glob("*.safetensors")):
            (pickles if any(sub.glob("*.bin")) else missing).append(f"{part}/*.safetensors")
    if pickles:
        raise StudioError(f"{folder} has only pickle weights for {', '.join(pickles)} (.bin); only safetensors are "
                          "loaded. Download the .safetensors files of this model instead.")
    if missing:
        raise StudioError(f"Model folder {folder} is incomplete: missing {', '.join(missing)}; {HOW_TO_GET_WEIGHTS}.")


_CACHE: dict[LoadOptions, ModelBundle] = {}
_CACHE_LOCK = threading.Lock()


def load_model(options: LoadOptions | None = None) -> ModelBundle:
    """Load (or reuse) the model for ``options``. Thread-safe; one load per options."""
    options = options or LoadOptions()
    source, location = resolve_model(options.model)
    device = pick_device(options.device)
    dtype = pick_dtype(device, options.dtype)
    key = replace(options, model=location, device=str(device), dtype=dtype_name(dtype))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load(key, source, location, device, dtype)
        return _CACHE[key]


def _load(options: LoadOptions, source: str, location: str, device: torch.device, dtype: torch.dtype) -> ModelBundle:
    kwargs: dict[str, Any] = dict(dtype=dtype, use_safetensors=True, safety_checker=None,
                                  feature_extractor=None, requires_safety_checker=False)
    if source == "folder":
        check_model_folder(Path(location))
        pipe = _call_loader(StableDiffusionPipeline.from_pretrained, location, local_files_only=True, **kwargs)
    elif source == "hub":
        pipe = _call_loader(StableDiffusionPipeline.from_pretrained, location, **kwargs)
    else:
        single_kwargs = {k: v for k, v in kwargs.items() if k != "use_safetensors"}
        if options.config:
            single_kwargs.update(config=options.config, local_files_only=True)
        pipe = _call_loader(StableDiffusionPipeline.from_single_file, location, **single_kwargs)
    try:
        return _prepare(pipe, options, source, location, device, dtype)
    except NotImplementedError as exc:  # "Cannot copy out of meta tensor": the file lacks weights
        raise StudioError(f"Could not load model '{location}': some weights are missing (an incomplete file, or "
                          f"not a Stable Diffusion 1.x/2.x checkpoint); {HOW_TO_GET_WEIGHTS}.") from exc


def _call_loader(loader: Any, location: str, **kwargs: Any) -> StableDiffusionPipeline:
    try:
        return loader(location, **kwargs)
    except StudioError:
        raise
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:  # NotImplementedError: weights missing
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StudioError(f"Could not load model '{location}': {first}. Check the path or your network; "
                          f"{HOW_TO_GET_WEIGHTS}.") from exc


def _prepare(pipe: StableDiffusionPipeline, options: LoadOptions, source: str, location: str,
             device: torch.device, dtype: torch.dtype) -> ModelBundle:
    warnings: list[str] = []
    for part in ("unet", "vae", "text_encoder"):
        getattr(pipe, part).requires_grad_(False).eval()
    if options.attention_slicing:
        pipe.enable_attention_slicing("auto")
    if options.vae_tiling:
        pipe.vae.enable_tiling()
    if options.cpu_offload and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
    else:
        if options.cpu_offload:
            warnings.append("CPU offload needs a CUDA GPU; ignored on this device.")
        pipe.to(device)
    name = Path(location).stem if source == "single_file" else Path(location).name if source == "folder" else location
    return ModelBundle(name=name, source=source, location=location, pipeline=pipe, device=device,
                       dtype=dtype, options=options, warnings=tuple(warnings))
