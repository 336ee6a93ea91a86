"""IP-Adapter (Ye et al. 2023): image prompts as extra cross-attention tokens, loaded by diffusers.

An IP-Adapter gives every cross-attention layer of the UNet a second set of keys and values,
computed from a few *image tokens* instead of the text:

    c     = LayerNorm(reshape(W e + b, (4, D)))               e: the reference's CLIP image embedding
    out   = Attn(q, K_text, V_text) + s * Attn(q, W_k' c, W_v' c)

(``e`` is ``CLIPVisionModelWithProjection(...).image_embeds``, D the UNet's cross-attention
width, ``s`` the adapter scale.) Only ``W, b``, the LayerNorm and ``W_k', W_v'`` are trained;
the diffusion model is untouched, so any adapter made for a model family works with its
fine-tunes. For classifier-free guidance the negative prompt gets the tokens of a zero
embedding, as diffusers' pipelines do.

How it runs here:

* The adapter is installed by diffusers' own loader (``UNet2DConditionLoadersMixin.
  _load_ip_adapter_weights``, what ``pipe.load_ip_adapter`` calls after reading the file) for the
  length of one request (:func:`ip_adapter_session`), under a lock, and the UNet's processors
  are always restored afterwards. :func:`install` is the one place that touches diffusers'
  internals; ``tests/test_ip_adapter.py`` checks it against diffusers' own call path.
* The projection runs once per request. Its tokens ride at the end of every prompt embedding
  (:class:`core.prompts.PromptEncoder`: positive prompts the reference's, negative prompts the
  zero embedding's) and the model call hands them to the processors as diffusers' UNet does
  itself, ``encoder_hidden_states=(text, [image tokens])`` (:meth:`core.engine.Engine.model_fn`).
  So text-to-image, region fusion, panoramas and stroke guidance all carry them unchanged, and a
  region with its own image prompt gets its own tokens (MultiDiffusion with an image per region).
* Several image prompts are combined as the weighted mean of their embeddings.

An adapter folder holds ``ip-adapter.safetensors`` (the original IP-Adapter layout: keys
``image_proj.proj.weight ...`` and ``ip_adapter.1.to_k_ip.weight ...``) and ``image_encoder/``
(a transformers ``CLIPVisionModelWithProjection`` folder, safetensors). h94/IP-Adapter's
``models/`` folder is one (name its ``ip-adapter_sd15.safetensors`` file); the bundled
``studio-ip-adapter`` (``python -m training.ip_adapter``) is the demo model's. Only the basic
adapter (4 tokens, ``proj.weight``) is supported; Plus and Face ID variants are refused.
"""
from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from PIL import Image
from torch import Tensor

from .errors import StudioError
from .loading import quiet

DEFAULT_IP_ADAPTER = "studio-ip-adapter"
WEIGHTS_FILE = "ip-adapter.safetensors"
ENCODER_DIR = "image_encoder"
TOKENS = 4  # image tokens of the basic IP-Adapter
MAX_FILE_BYTES = 2 << 30  # an adapter or image encoder over 2 GiB is refused before it is read
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "pretrained_models"
_CACHE: dict[tuple[str, str, str], "IpAdapter"] = {}
_CACHE_LOCK = threading.Lock()
_SESSION_LOCK = threading.RLock()  # one installation at a time per process (the UNet is shared)


@dataclass
class IpAdapter:
    """A loaded adapter: its state dicts (diffusers' loader input) and its image encoder."""

    name: str
    state: dict[str, dict[str, Tensor]]  # {"image_proj": {...}, "ip_adapter": {...}}
    encoder: Any  # transformers.CLIPVisionModelWithProjection, frozen
    processor: Any  # transformers.CLIPImageProcessor

    @property
    def embed_dim(self) -> int:
        return int(self.state["image_proj"]["proj.weight"].shape[1])

    @property
    def cross_attention_dim(self) -> int:
        return int(self.state["image_proj"]["proj.weight"].shape[0]) // TOKENS

    def embed(self, images: Sequence[Image.Image], weights: Sequence[float] | None = None) -> Tensor:
        """(1, E): the weighted mean of the images' CLIP image embeddings."""
        embeds = image_embeds(self.encoder, self.processor, images)
        w = torch.tensor(list(weights) if weights is not None else [1.0] * len(images), dtype=torch.float32,
                         device=embeds.device)
        return ((w[:, None] * embeds).sum(0, keepdim=True) / w.sum().clamp_min(1e-8))


@torch.no_grad()
def image_embeds(encoder: Any, processor: Any, images: Sequence[Image.Image]) -> Tensor:
    """(N, E) CLIP image embeddings, as diffusers' pipelines compute them (``image_embeds``)."""
    param = next(encoder.parameters())
    pixels = processor(images=[im.convert("RGB") for im in images], return_tensors="pt").pixel_values
    return encoder(pixel_values=pixels.to(param.device, param.dtype)).image_embeds.float()


def _models_dir() -> Path:
    from .loading import models_dir

    return models_dir()


def resolve_ip_adapter(spec: str | None) -> tuple[Path, Path]:
    """(weights file, image encoder folder) that ``spec`` names: a folder with ip-adapter.safetensors
    (or one other adapter .safetensors) and image_encoder/, or an adapter .safetensors file whose
    folder has image_encoder/ (h94/IP-Adapter's models/ layout). Names are looked up in the models
    folder, then the bundled one."""
    spec = (spec or DEFAULT_IP_ADAPTER).strip()
    path = Path(spec).expanduser()
    for root in (_models_dir(), BUNDLED_DIR):
        if not path.exists() and (root / spec).exists():
            path = root / spec
    if not path.exists():
        raise StudioError(f"IP-Adapter {spec} not found: give a folder with ip-adapter.safetensors and image_encoder/ "
                          "(for example h94/IP-Adapter's models/ip-adapter_sd15.safetensors beside models/image_encoder), "
                          f"or leave it empty for the bundled {DEFAULT_IP_ADAPTER}.")
    if path.is_file():
        weights, folder = path, path.parent
    else:
        folder = path
        weights = path / WEIGHTS_FILE
        if not weights.exists():
            found = sorted(p for p in path.glob("*.safetensors"))
            if len(found) != 1:
                pickles = list(path.glob("*.bin")) + list(path.glob("*.pt"))
                hint = (" It has only pickle weights (.bin), which are never loaded (they can run code); "
                        "download the .safetensors file instead." if pickles and not found else
                        " Name the adapter's .safetensors file itself." if found else "")
                raise StudioError(f"IP-Adapter folder {spec} has no {WEIGHTS_FILE}.{hint}")
            weights = found[0]
    if weights.suffix != ".safetensors":
        raise StudioError(f"IP-Adapter {spec}: only .safetensors adapters are loaded (pickles can run code).")
    if weights.stat().st_size > MAX_FILE_BYTES:
        raise StudioError(f"IP-Adapter {weights.name} is {weights.stat().st_size >> 20} MB, over the "
                          f"{MAX_FILE_BYTES >> 30} GB limit: that is not an IP-Adapter.")
    encoder = folder / ENCODER_DIR
    if not (encoder / "config.json").exists():
        raise StudioError(f"IP-Adapter {spec} has no {ENCODER_DIR}/config.json beside its weights: download the "
                          "adapter's image encoder folder too.")
    encoder_weights = list(encoder.glob("*.safetensors"))
    if not encoder_weights:
        raise StudioError(f"IP-Adapter {spec}: {ENCODER_DIR}/ has no model.safetensors (pickled .bin weights are "
                          "never loaded): download the safetensors weights.")
    if any(p.stat().st_size > MAX_FILE_BYTES for p in encoder_weights):
        raise StudioError(f"IP-Adapter {spec}: its image encoder is over the {MAX_FILE_BYTES >> 30} GB limit.")
    return weights, encoder


def read_state(weights: Path, name: str) -> dict[str, dict[str, Tensor]]:
    """The adapter file as diffusers' loader takes it, every key and shape checked first."""
    from safetensors import SafetensorError, safe_open

    state: dict[str, dict[str, Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            keys = list(f.keys())
            for key in keys:
                group, _, rest = key.partition(".")
                if group not in state:
                    raise StudioError(f"IP-Adapter {name}: unexpected tensor {key[:80]!r}; an IP-Adapter file holds "
                                      "only image_proj.* and ip_adapter.* tensors.")
                state[group][rest] = f.get_tensor(key)
    except SafetensorError as e:
        raise StudioError(f"IP-Adapter {name}: {weights.name} is not a readable safetensors file ({e}).") from None
    proj = state["image_proj"]
    if set(proj) != {"proj.weight", "proj.bias", "norm.weight", "norm.bias"}:
        raise StudioError(f"IP-Adapter {name}: only the basic IP-Adapter (ip-adapter_sd15: image_proj.proj and "
                          "image_proj.norm) is supported, not Plus, Full-face or Face ID variants.")
    w = proj["proj.weight"]
    if w.ndim != 2 or w.shape[0] % TOKENS or proj["proj.bias"].shape != (w.shape[0],) \
            or proj["norm.weight"].shape != (w.shape[0] // TOKENS,) or proj["norm.bias"].shape != (w.shape[0] // TOKENS,):
        raise StudioError(f"IP-Adapter {name}: image_proj tensors have inconsistent shapes.")
    layers = state["ip_adapter"]
    ids = sorted({k.split(".")[0] for k in layers})
    for i in ids:
        if not i.isdigit() or {f"{i}.to_k_ip.weight", f"{i}.to_v_ip.weight"} != {k for k in layers if k.split(".")[0] == i}:
            raise StudioError(f"IP-Adapter {name}: ip_adapter layer {i[:20]!r} must hold exactly to_k_ip.weight and "
                              "to_v_ip.weight.")
        for part in ("to_k_ip", "to_v_ip"):
            t = layers[f"{i}.{part}.weight"]
            if t.ndim != 2 or t.shape[1] != w.shape[0] // TOKENS:
                raise StudioError(f"IP-Adapter {name}: {i}.{part} does not take {w.shape[0] // TOKENS}-wide tokens.")
    if not ids:
        raise StudioError(f"IP-Adapter {name}: the file holds no ip_adapter layers.")
    return state


def load_ip_adapter(spec: str | None, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> IpAdapter:
    """Load (once per spec, device and dtype) an IP-Adapter with its image encoder; one-line errors."""
    weights, encoder_dir = resolve_ip_adapter(spec)
    name = spec or DEFAULT_IP_ADAPTER
    key = (str(weights), str(device), str(dtype))
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        state = read_state(weights, name)
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        try:
            config = json.loads((encoder_dir / "config.json").read_text(encoding="utf-8"))
            if not isinstance(config, dict) or config.get("model_type") not in ("clip", "clip_vision_model"):
                raise ValueError("config.json is not a CLIP vision model's")
            from transformers.utils import logging as hf_logging

            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # a CLIPModel folder loads its vision half: no notes about the rest
            try:
                encoder = CLIPVisionModelWithProjection.from_pretrained(encoder_dir, use_safetensors=True,
                                                                        local_files_only=True)
            finally:
                hf_logging.set_verbosity(verbosity)
            if (encoder_dir / "preprocessor_config.json").exists():
                processor = CLIPImageProcessor.from_pretrained(encoder_dir, local_files_only=True)
            else:  # diffusers' default for an adapter without one
                size = int(encoder.config.image_size)
                processor = CLIPImageProcessor(size=size, crop_size=size)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
            raise StudioError(f"IP-Adapter {name}: its image encoder could not be loaded ({str(e).splitlines()[0]}); "
                              "check that image_encoder/ is a complete transformers CLIP vision folder.") from None
        if int(encoder.config.projection_dim) != int(state["image_proj"]["proj.weight"].shape[1]):
            raise StudioError(f"IP-Adapter {name}: its image encoder's embeddings are {encoder.config.projection_dim} "
                              f"wide but the adapter takes {state['image_proj']['proj.weight'].shape[1]}: the "
                              "image_encoder/ folder belongs to another adapter.")
        adapter = IpAdapter(name, {g: {k: v.to(device, dtype) for k, v in d.items()} for g, d in state.items()},
                            encoder.to(device, dtype).eval().requires_grad_(False), processor)
        _CACHE[key] = adapter
        return adapter


def cross_attention_layers(unet: Any) -> list[str]:
    """The names of the UNet's cross-attention processors, in diffusers' (and IP-Adapter's) order."""
    return [name for name in unet.attn_processors if not name.endswith("attn1.processor")
            and "motion_modules" not in name]


def check_fits(adapter: IpAdapter, unet: Any) -> None:
    """One line when the adapter was made for another model family."""
    width = int(unet.config.cross_attention_dim)
    if adapter.cross_attention_dim != width:
        raise StudioError(f"IP-Adapter {adapter.name} was made for models with {adapter.cross_attention_dim}-wide "
                          f"text embeddings; this model's are {width} wide (an SD 1.x adapter needs an SD 1.x model; "
                          f"the bundled demo model uses {DEFAULT_IP_ADAPTER}).")
    layers = cross_attention_layers(unet)
    expected = {str(1 + 2 * i) for i in range(len(layers))}
    found = {k.split(".")[0] for k in adapter.state["ip_adapter"]}
    if found != expected:
        raise StudioError(f"IP-Adapter {adapter.name} has {len(found)} attention layers; this model has "
                          f"{len(layers)}: it was made for another model.")
    for i, name in enumerate(layers):
        hidden = unet.get_submodule(name.removesuffix(".processor")).to_q.out_features
        if adapter.state["ip_adapter"][f"{1 + 2 * i}.to_k_ip.weight"].shape[0] != hidden:
            raise StudioError(f"IP-Adapter {adapter.name} does not fit this model's attention layers: it was made "
                              "for another model.")


@contextmanager
def install(unet: Any, state: dict[str, dict[str, Tensor]], scale: float) -> Iterator[Any]:
    """Install an adapter's processors on ``unet`` for the block (diffusers' loader); yields the
    image projection, taken out of the UNet so that the model call passes tokens directly.
    The UNet's processors and projection are restored on exit, also on error."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

    with _SESSION_LOCK:
        saved = dict(unet.attn_processors)
        saved_proj, saved_type = unet.encoder_hid_proj, unet.config.encoder_hid_dim_type
        try:
            with quiet("diffusers.models.modeling_utils"):  # its note on fp32 modules of the whole UNet's .to()
                unet._load_ip_adapter_weights([state], low_cpu_mem_usage=False)
            projection = unet.encoder_hid_proj
            unet.encoder_hid_proj, unet.config.encoder_hid_dim_type = saved_proj, saved_type
            for processor in unet.attn_processors.values():
                if isinstance(processor, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0)):
                    processor.scale = [float(scale)]
            yield projection
        finally:
            unet.set_attn_processor(saved)
            unet.encoder_hid_proj, unet.config.encoder_hid_dim_type = saved_proj, saved_type


@dataclass
class ImageTokens:
    """The image tokens of one request: appended to every prompt embedding (``TOKENS`` rows)."""

    positive: Tensor  # (1, TOKENS, D): the whole picture's reference(s)
    negative: Tensor  # (1, TOKENS, D): a zero embedding's (the unconditional pass)
    regions: dict[int, Tensor]  # id(region.image_prompt) -> (1, TOKENS, D): a region's own reference

    @property
    def count(self) -> int:
        return int(self.positive.shape[1])

    def for_region(self, region: Any) -> Tensor:
        """A region's tokens: its own image prompt's, else the whole picture's."""
        return self.regions.get(id(getattr(region, "image_prompt", None)), self.positive)


def uses_ip_adapter(request: Any) -> bool:
    guidance = getattr(request, "image_guidance", None)
    return guidance is not None and guidance.method == "ip-adapter"


def _tokens(projection: Any, embeds: Tensor, dtype: torch.dtype) -> Tensor:
    with torch.no_grad():
        return projection([embeds[:, None].to(dtype)])[0][:, 0]  # (1, TOKENS, D)


@contextmanager
def ip_adapter_session(engine: Any, request: Any) -> Iterator[ImageTokens | None]:
    """For a request whose image guidance is the IP-Adapter: install it on the engine's UNet and
    set ``engine.image_tokens`` for the block (prompt encoders and the model call read it);
    for any other request, nothing."""
    if not uses_ip_adapter(request) or getattr(engine, "image_tokens", None) is not None:
        yield getattr(engine, "image_tokens", None)
        return
    guidance = request.image_guidance
    if getattr(request, "words", None):
        raise StudioError("IP-Adapter image prompts do not combine with paint-with-words (both change the "
                          "cross-attention): drop the words, or use CLIP guidance for the image prompt.")
    if getattr(request, "attention", False) or getattr(request, "region_attention", False):
        raise StudioError("IP-Adapter image prompts do not combine with one-pass region prompts (both change the "
                          "cross-attention): use exact region fusion, or CLIP guidance for the image prompt.")
    bundle = engine.bundle
    unet = bundle.unet
    dtype = next(unet.parameters()).dtype
    adapter = load_ip_adapter(guidance.ip_adapter, bundle.device, dtype)
    check_fits(adapter, unet)
    regions = {id(r.image_prompt): r.image_prompt for r in getattr(request, "regions", None) or ()
               if getattr(r, "image_prompt", None) is not None and r.image_prompt.weight > 0}
    prompts = [p for p in guidance.prompts if p.weight > 0]
    with install(unet, adapter.state, guidance.scale) as projection:
        zero = torch.zeros(1, adapter.embed_dim, device=bundle.device)
        negative = _tokens(projection, zero, dtype)
        positive = (_tokens(projection, adapter.embed([p.image for p in prompts], [p.weight for p in prompts]), dtype)
                    if prompts else negative)
        tokens = ImageTokens(positive, negative,
                             {i: _tokens(projection, adapter.embed([p.image]), dtype) for i, p in regions.items()})
        engine.image_tokens = tokens
        try:
            yield tokens
        finally:
            engine.image_tokens = None


def split_tokens(embeddings: Tensor, tokens: ImageTokens | None) -> Tensor | tuple[Tensor, list[Tensor]]:
    """The UNet's ``encoder_hidden_states`` for embeddings that end in image tokens: (text, [tokens])."""
    if tokens is None:
        return embeddings
    k = tokens.count
    return embeddings[:, :-k], [embeddings[:, -k:]]

