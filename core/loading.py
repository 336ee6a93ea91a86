"""Load Stable Diffusion class models: a diffusers folder, a hub id, or one .safetensors file.

Safetensors only (``use_safetensors=True``): pickled ``.bin``/``.ckpt`` weights are refused,
and no remote code is ever run. Loaded models are cached by their :class:`LoadOptions` and
shared; requests never change them (each request builds its own scheduler and generator).

A LoRA (e.g. an LCM-LoRA, for few-step sampling with the ``lcm`` scheduler) is loaded only
when the options name its file: diffusers' loader reads it, its weights are fused into the
model at the chosen scale and the adapter layers dropped, so the loaded model runs as fast as
a plain one and is cached as a model of its own.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import numbers
import os
import re
import threading
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterator

import torch
from diffusers import StableDiffusionPipeline
from safetensors import SafetensorError, safe_open

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
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
LORA_SCALE_MAX = 4.0  # LCM-LoRA runs at 1 and style LoRAs near it; far above, the fused weights are noise
HOW_TO_GET_LCM_LORA = (
    "the LCM-LoRA for SD 1.5 is `huggingface-cli download latent-consistency/lcm-lora-sdv1-5 "
    "pytorch_lora_weights.safetensors --local-dir pretrained_models/lcm-lora-sdv1-5`"
)
# the low-rank "down" matrix of one adapted layer, in diffusers/peft (lora_A), kohya (lora_down)
# and old diffusers (lora.down, to_q_lora.down) key formats: one per layer the LoRA changes
_LORA_DOWN_KEY = re.compile(r"(lora_A|lora[._]down)(\.[^.]+)?\.weight$")
_ADAPTER = "studio_lora"
_LORA_LOGGERS = ("diffusers.loaders.lora_base", "diffusers.loaders.peft", "diffusers.utils.peft_utils")


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
    lora: str | None = None  # a LoRA .safetensors file fused into the model (e.g. an LCM-LoRA); None: none
    lora_scale: float = 1.0  # its strength, 0..4 (1: as trained; 0: the model unchanged)

    def __post_init__(self) -> None:
        for name in ("model", "device", "dtype", "config", "lora"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
            elif value is not None and not isinstance(value, str):
                raise StudioError(f"Load option {name} must be text (or None), got {value!r:.40}.")
        for name in ("attention_slicing", "vae_tiling", "cpu_offload"):
            if not isinstance(getattr(self, name), bool):
                raise StudioError(f"Load option {name} must be true or false, got {getattr(self, name)!r:.40}.")
        scale = self.lora_scale
        if not (isinstance(scale, numbers.Real) and not isinstance(scale, bool) and math.isfinite(scale)
                and 0 <= scale <= LORA_SCALE_MAX):
            raise StudioError(f"LoRA scale must be a number from 0 to {LORA_SCALE_MAX:g} (1: the LoRA as trained), "
                              f"got {scale!r:.40}.")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "LoadOptions":
        """LoadOptions(**kwargs), with a StudioError naming an unknown option."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise StudioError(f"Unknown load option(s) {', '.join(unknown)}: use {', '.join(sorted(known))}.")
        return cls(**kwargs)


@dataclass(frozen=True)
class LoraInfo:
    """The LoRA fused into a loaded model, as ``info()`` and recipes record it."""

    file: str  # the file's name
    location: str  # its absolute path
    sha256: str  # the first 12 hex digits of the file's SHA-256: which weights ran
    scale: float

    def record(self) -> dict[str, Any]:
        return asdict(self)


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
    lora: LoraInfo | None = None  # the LoRA fused into the UNet (and text encoder), if any

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
            "lora": self.lora.record() if self.lora else None,
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
    if path.suffix in PICKLE_SUFFIXES:
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
    lora = str(resolve_lora(options.lora)) if options.lora else None
    key = replace(options, model=location, device=str(device), dtype=dtype_name(dtype), lora=lora,
                  lora_scale=options.lora_scale if lora else 1.0)
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
    lora = fuse_lora(pipe, Path(options.lora), options.lora_scale) if options.lora else None
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
                       dtype=dtype, options=options, warnings=tuple(warnings), lora=lora)


# --- LoRA ----------------------------------------------------------------------------------------


def resolve_lora(spec: str) -> Path:
    """The LoRA file ``spec`` names, checked before any model loads: a readable .safetensors
    file holding LoRA weights (pickles are refused unopened), with peft there to load it."""
    path = Path(spec).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise StudioError(f"LoRA {spec} is a pickle file; only .safetensors LoRAs are loaded (pickles can run code). "
                          "Download the .safetensors version of this LoRA (most have one) or convert it.")
    if path.suffix.lower() != ".safetensors":
        raise StudioError(f"LoRA {spec} must be a .safetensors file (e.g. pytorch_lora_weights.safetensors); "
                          f"{HOW_TO_GET_LCM_LORA}.")
    if not path.is_file():
        raise StudioError(f"LoRA file {spec} not found: check the path; {HOW_TO_GET_LCM_LORA}.")
    try:
        with safe_open(str(path), framework="pt") as file:
            keys = list(file.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise StudioError(f"LoRA {spec} is not a readable safetensors file (damaged, or another format renamed): "
                          "download it again.") from exc
    if not any(_LORA_DOWN_KEY.search(k) for k in keys):
        raise StudioError(f"{spec} holds no LoRA weights (no lora_A / lora_down tensors): it is a model or "
                          "something else; give a LoRA file.")
    from diffusers.utils import USE_PEFT_BACKEND

    if not USE_PEFT_BACKEND:
        raise StudioError("Loading a LoRA needs the peft package: `pip install 'peft>=0.17,<1'` "
                          "(it is in requirements.txt).")
    return path.resolve()


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def lora_sha256(path: str | Path) -> str:
    """The first 12 hex digits of a file's SHA-256 (cached while the file is unchanged)."""
    stat = os.stat(path)
    return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)[:12]


def fuse_lora(pipe: StableDiffusionPipeline, path: Path, scale: float) -> LoraInfo:
    """Load the LoRA at ``path`` with diffusers' loader, fuse it at ``scale`` and drop the adapter
    layers. Every layer the file adapts must exist in this model with the right shape (diffusers
    only warns about the rest); on any error the pipeline is thrown away, never cached."""
    with safe_open(str(path), framework="pt") as file:
        expected = sum(1 for k in file.keys() if _LORA_DOWN_KEY.search(k))
    try:
        with quiet(*_LORA_LOGGERS):  # their notes (no text-encoder keys, unmatched keys) and errors become ours
            pipe.load_lora_weights(str(path), adapter_name=_ADAPTER)
    except (ValueError, RuntimeError, KeyError, IndexError, TypeError, AttributeError) as exc:
        text = str(exc).strip()
        why = ("its layers' shapes are not this model's" if "size mismatch" in text
               else "none of its layers names a layer of this model" if "Target modules" in text
               else text.splitlines()[0][:160] if text else type(exc).__name__)
        raise StudioError(f"LoRA {path.name} does not fit this model ({why}): use a LoRA made for this model's "
                          "family (e.g. lcm-lora-sdv1-5 for SD 1.5).") from exc
    loaded = sum(_adapted_layers(getattr(pipe, part)) for part in ("unet", "text_encoder"))
    if loaded != expected:
        raise StudioError(f"LoRA {path.name} does not fit this model: {expected - loaded} of its {expected} layers "
                          "name no layer of this UNet or text encoder; use a LoRA made for this model's family "
                          "(e.g. lcm-lora-sdv1-5 for SD 1.5).")
    try:
        pipe.fuse_lora(lora_scale=scale, safe_fusing=True, adapter_names=[_ADAPTER])
    except ValueError as exc:  # safe_fusing: the fused weights would hold NaN
        raise StudioError(f"LoRA {path.name} holds NaN or infinite weights: the file is damaged; download it "
                          "again.") from exc
    pipe.unload_lora_weights()
    return LoraInfo(file=path.name, location=str(path), sha256=lora_sha256(path), scale=float(scale))


@contextlib.contextmanager
def quiet(*names: str) -> Iterator[None]:
    """Silence the named loggers for the block (loads hold the cache lock, so no race)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _adapted_layers(module: torch.nn.Module) -> int:
    """How many layers of ``module`` carry the adapter just loaded."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(1 for m in module.modules() if isinstance(m, BaseTunerLayer) and _ADAPTER in getattr(m, "lora_A", {}))
