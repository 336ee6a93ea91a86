"""Export a diffusers-format SD 1.x model as one original-format (LDM/CompVis) ``.safetensors`` file.

This is the inverse of diffusers' single-file conversion (``StableDiffusionPipeline.from_single_file``):
the file has the key layout of ``v1-5-pruned-emaonly.safetensors``, so AUTOMATIC1111, ComfyUI and
diffusers can load it::

    python -m training.checkpoint_export pretrained_models/studio-demo studio-demo.safetensors [--dtype fp16]

* UNet -> ``model.diffusion_model.*`` (``input_blocks`` / ``middle_block`` / ``output_blocks``; the
  block indices follow from ``layers_per_block`` and the number of blocks, read from ``unet/config.json``).
* VAE -> ``first_stage_model.*`` (``encoder.down.N.block.M``, ``decoder.up.N`` in reverse order, and the
  mid-block attention as 1x1 convolutions ``q``/``k``/``v``/``proj_out`` as in the original code).
* CLIP text encoder -> ``cond_stage_model.transformer.text_model.*``.

Only the weights are written (the tokenizer, scheduler and configs are not part of an LDM checkpoint);
every weight is renamed, none is dropped: a key this mapping does not know is an error, not a silent
loss. Safetensors only, in and out. Only the SD 1.x layout (CLIP ViT-L style text encoder) is produced:
SD 2.x originals name their OpenCLIP text encoder differently (``cond_stage_model.model.*``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import load_file, save_file

from core.errors import StudioError

log = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
EXIT_USER_ERROR = 2

# diffusers name -> original name, for modules whose inner parameter names are shared (".weight", ".bias").
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_VAE_TOP = {"encoder.conv_in": "encoder.conv_in", "encoder.conv_out": "encoder.conv_out",
            "encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_in": "decoder.conv_in",
            "decoder.conv_out": "decoder.conv_out", "decoder.conv_norm_out": "decoder.norm_out",
            "quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
# current diffusers names, then the names of folders saved by old diffusers versions
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
             "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}
_VAE_ATTN_CONV = ("q", "k", "v", "proj_out")  # linear in diffusers, 1x1 conv in the original VAE
_CLIP_TOP = ("embeddings.", "encoder.", "final_layer_norm.")

_PARAM = r"(weight|bias)"
_RE_UNET_BLOCK = re.compile(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)")
_RE_UNET_MID = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")
_RE_VAE_TOP = re.compile(rf"(.+)\.{_PARAM}")
_RE_VAE_DOWN = re.compile(rf"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.{_PARAM}")
_RE_VAE_DOWNSAMPLE = re.compile(rf"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.{_PARAM}")
_RE_VAE_UP = re.compile(rf"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.{_PARAM}")
_RE_VAE_UPSAMPLE = re.compile(rf"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.{_PARAM}")
_RE_VAE_MID_RESNET = re.compile(rf"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(\w+)\.{_PARAM}")
_RE_VAE_MID_ATTN = re.compile(rf"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.{_PARAM}")


class _Unmapped(Exception):
    """A diffusers key this exporter has no original-format name for."""


def _rename_module(rest: str, table: dict[str, str]) -> str:
    """``conv1.weight`` -> ``in_layers.2.weight`` with ``table``; the longest matching module name wins."""
    for name in sorted(table, key=len, reverse=True):
        if rest.startswith(name + "."):
            return table[name] + rest[len(name):]
    raise _Unmapped(rest)


def _layers_per_block(config: dict[str, Any]) -> int:
    value = config.get("layers_per_block", 2)
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise StudioError(f"The UNet has a different layers_per_block per block ({list(value)}); the original "
                              "checkpoint format (and diffusers' single-file loader) needs one number.")
        value = value[0]
    return int(value)


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A UNet2DConditionModel state dict in original names (without the ``model.diffusion_model.`` prefix).

    Original layout, with L = layers_per_block: ``input_blocks.0`` is conv_in; down block b's layer j is
    ``input_blocks.{1 + b*(L+1) + j}`` (``.0`` resnet, ``.1`` transformer) and its downsampler is the
    next index, ``input_blocks.{1 + b*(L+1) + L}.0.op``; ``middle_block.0/1/2`` is resnet, transformer,
    resnet; up block b's layer j (L+1 layers) is ``output_blocks.{b*(L+1) + j}`` with the upsampler in
    the last layer, after the transformer when there is one (``.2.conv``) else ``.1.conv``.
    """
    per = _layers_per_block(config) + 1
    up_with_attention = {int(m.group(1)) for k in state if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}

    def rename(key: str) -> str:
        if (m := re.fullmatch(rf"(.+)\.{_PARAM}", key)) and m.group(1) in _UNET_TOP:
            return f"{_UNET_TOP[m.group(1)]}.{m.group(2)}"
        if m := _RE_UNET_BLOCK.fullmatch(key):
            side, block, kind, layer, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
            if side == "down":
                if kind == "downsamplers":
                    if layer != 0 or not rest.startswith("conv."):
                        raise _Unmapped(key)
                    return f"input_blocks.{1 + block * per + per - 1}.0.op.{rest[len('conv.'):]}"
                if kind == "upsamplers" or layer >= per - 1:
                    raise _Unmapped(key)
                index = 1 + block * per + layer
            else:
                if kind == "upsamplers":
                    if layer != 0 or not rest.startswith("conv."):
                        raise _Unmapped(key)
                    slot = 2 if block in up_with_attention else 1
                    return f"output_blocks.{block * per + per - 1}.{slot}.{rest}"
                if kind == "downsamplers" or layer >= per:
                    raise _Unmapped(key)
                index = block * per + layer
            name = "input_blocks" if side == "down" else "output_blocks"
            if kind == "resnets":
                return f"{name}.{index}.0.{_rename_module(rest, _UNET_RESNET)}"
            return f"{name}.{index}.1.{rest}"
        if m := _RE_UNET_MID.fullmatch(key):
            kind, index, rest = m.group(1), int(m.group(2)), m.group(3)
            if kind == "resnets":
                return f"middle_block.{2 * index}.{_rename_module(rest, _UNET_RESNET)}"
            return f"middle_block.{2 * index + 1}.{rest}"
        raise _Unmapped(key)

    return _convert(state, rename, "UNet")


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """An AutoencoderKL state dict in original names (without the ``first_stage_model.`` prefix).

    The decoder's ``up_blocks`` run from the smallest resolution up, the original ``decoder.up.N`` from
    the largest down, so up block i is ``decoder.up.{n-1-i}``. The mid-block attention's q/k/v/proj_out
    weights become (out, in, 1, 1) convolution kernels, the shape diffusers' converter squeezes back.
    """
    n_up = len(config.get("up_block_types") or config.get("block_out_channels") or ())

    def resnet(module: str, param: str) -> str:
        return _rename_module(f"{module}.{param}", _VAE_RESNET)

    def rename(key: str) -> str:
        if (m := _RE_VAE_TOP.fullmatch(key)) and m.group(1) in _VAE_TOP:
            return f"{_VAE_TOP[m.group(1)]}.{m.group(2)}"
        if m := _RE_VAE_DOWN.fullmatch(key):
            return f"encoder.down.{m.group(1)}.block.{m.group(2)}.{resnet(m.group(3), m.group(4))}"
        if m := _RE_VAE_DOWNSAMPLE.fullmatch(key):
            return f"encoder.down.{m.group(1)}.downsample.conv.{m.group(2)}"
        if m := _RE_VAE_UP.fullmatch(key):
            block = _reverse(int(m.group(1)), n_up, key)
            return f"decoder.up.{block}.block.{m.group(2)}.{resnet(m.group(3), m.group(4))}"
        if m := _RE_VAE_UPSAMPLE.fullmatch(key):
            return f"decoder.up.{_reverse(int(m.group(1)), n_up, key)}.upsample.conv.{m.group(2)}"
        if m := _RE_VAE_MID_RESNET.fullmatch(key):
            return f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.{resnet(m.group(3), m.group(4))}"
        if m := _RE_VAE_MID_ATTN.fullmatch(key):
            return f"{m.group(1)}.mid.attn_1.{_rename_module(m.group(2) + '.' + m.group(3), _VAE_ATTN)}"
        raise _Unmapped(key)

    out = _convert(state, rename, "VAE")
    for key, tensor in out.items():
        if key.endswith(tuple(f".mid.attn_1.{name}.weight" for name in _VAE_ATTN_CONV)) and tensor.ndim == 2:
            out[key] = tensor.reshape(*tensor.shape, 1, 1).contiguous()
    return out


def _reverse(index: int, count: int, key: str) -> int:
    if not 0 <= index < count:
        raise _Unmapped(key)
    return count - 1 - index


def clip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIPTextModel state dict in original names (without ``cond_stage_model.transformer.text_model.``).

    transformers >= 5.6 saves CLIPTextModel without the ``text_model.`` level, older versions with it:
    both are accepted.
    """
    def rename(key: str) -> str:
        rest = key[len("text_model."):] if key.startswith("text_model.") else key
        if not rest.startswith(_CLIP_TOP):
            raise _Unmapped(key)
        return rest

    return _convert(state, rename, "text encoder")


def _convert(state: dict[str, torch.Tensor], rename: Callable[[str], str], part: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        try:
            new = rename(key)
        except _Unmapped:
            unknown.append(key)
            continue
        if new in out:
            raise StudioError(f"{part}: two weights map to the same original key {new}; is this an SD 1.x model?")
        out[new] = tensor
    if unknown:
        shown = ", ".join(sorted(unknown)[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise StudioError(f"The {part} has weights with no place in an SD 1.x original checkpoint: {shown}. Only "
                          "Stable Diffusion 1.x-layout models (UNet2DConditionModel, AutoencoderKL, CLIP text "
                          "encoder) can be exported.")
    return out


# --- reading a diffusers folder ----------------------------------------------------------

_PARTS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StudioError(f"{path} is missing: is {path.parent.parent} a diffusers-format model folder?") from None
    except (OSError, ValueError) as exc:
        raise StudioError(f"Could not read {path}: {exc}") from exc


def _load_part(folder: Path, part: str) -> dict[str, torch.Tensor]:
    """The weights of one component: the plain file, the shards of an index, or a lone variant file."""
    sub, stem = folder / part, _PARTS[part]
    if not sub.is_dir():
        raise StudioError(f"{folder} has no {part}/ folder: it is not a complete diffusers-format SD model.")
    files: list[Path]
    if (sub / f"{stem}.safetensors").is_file():
        files = [sub / f"{stem}.safetensors"]
    elif (index := sub / f"{stem}.safetensors.index.json").is_file():
        files = [sub / name for name in sorted(set(_read_json(index).get("weight_map", {}).values()))]
    else:
        files = sorted(sub.glob("*.safetensors"))
        if len(files) != 1:
            found = ", ".join(p.name for p in files) or "none"
            pickles = " (it has pickle .bin weights, which are not read)" if any(sub.glob("*.bin")) else ""
            raise StudioError(f"Expected one {part}/{stem}.safetensors in {folder}, found: {found}{pickles}.")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            state.update(load_file(str(path)))
        except Exception as exc:  # safetensors raises its own error types for broken files
            raise StudioError(f"Could not read {path}: {exc}") from exc
    return state


def _check_class(config: dict[str, Any], expected: str, part: str) -> None:
    name = config.get("_class_name") or (config.get("architectures") or [None])[0]
    if name != expected:
        raise StudioError(f"{part} is a {name}, not a {expected}: only Stable Diffusion 1.x-layout models can be "
                          "exported.")


def convert_folder(diffusers_folder: str | Path, dtype: str | None = None) -> dict[str, torch.Tensor]:
    """The full original-format state dict of a diffusers SD folder (prefixed keys), in memory."""
    folder = Path(diffusers_folder).expanduser()
    if not folder.is_dir():
        raise StudioError(f"Model folder {folder} not found: give the path of a diffusers-format model folder.")
    if dtype not in (None, "", "keep") and dtype not in DTYPES:
        raise StudioError(f"Unknown precision '{dtype}': use keep, {', '.join(DTYPES)}.")
    unet_config = _read_json(folder / "unet" / "config.json")
    vae_config = _read_json(folder / "vae" / "config.json")
    text_config = _read_json(folder / "text_encoder" / "config.json")
    _check_class(unet_config, "UNet2DConditionModel", "unet")
    _check_class(vae_config, "AutoencoderKL", "vae")
    _check_class(text_config, "CLIPTextModel", "text_encoder")
    if int(text_config.get("hidden_size", 768)) == 1024:
        log.warning("The text encoder is 1024 wide (SD 2.x, OpenCLIP): it is written with SD 1.x CLIP key names, "
                    "which diffusers loads but A1111/ComfyUI expect as cond_stage_model.model.* for SD 2.x.")
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if scheduler.is_file() and _read_json(scheduler).get("prediction_type") == "v_prediction":
        log.warning("This model predicts v (v_prediction): tell the loading program so (an A1111 .yaml with "
                    "parameterization: v, or ComfyUI's ModelSamplingDiscrete v_prediction).")

    out: dict[str, torch.Tensor] = {}
    for prefix, part_state in (
        (UNET_PREFIX, unet_to_ldm(_load_part(folder, "unet"), unet_config)),
        (VAE_PREFIX, vae_to_ldm(_load_part(folder, "vae"), vae_config)),
        (CLIP_PREFIX, clip_to_ldm(_load_part(folder, "text_encoder"))),
    ):
        for key, tensor in part_state.items():
            if dtype in DTYPES and tensor.is_floating_point():
                tensor = tensor.to(DTYPES[dtype])
            out[prefix + key] = tensor.contiguous()
    return out


def export_single_file(diffusers_folder: str | Path, out_path: str | Path, *, dtype: str | None = None,
                       overwrite: bool = False) -> Path:
    """Write the SD model in ``diffusers_folder`` as one original-format ``.safetensors`` file.

    ``dtype``: None/"keep" keeps each tensor's precision, else fp32, fp16 or bf16 (fp16 halves the file,
    the usual choice for sharing). An existing ``out_path`` is refused unless ``overwrite``. The file is
    written next to its destination and renamed into place, so a failed export leaves nothing behind.
    Returns the path written.
    """
    out = Path(out_path).expanduser()
    if out.suffix != ".safetensors":
        raise StudioError(f"{out} must end in .safetensors: only safetensors checkpoints are written "
                          "(pickled .ckpt files can run code when loaded).")
    if out.exists() and not overwrite:
        raise StudioError(f"{out} already exists: choose another name or overwrite it (--force).")
    state = convert_folder(diffusers_folder, dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    metadata = {"format": "pt", "exported_by": "core.checkpoint_export",
                "source": Path(diffusers_folder).expanduser().resolve().name}
    try:
        save_file(state, str(tmp), metadata=metadata)
        os.replace(tmp, out)
    except OSError as exc:
        raise StudioError(f"Could not write {out}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _resolve_folder(spec: str) -> Path:
    """A folder path, or a model name under pretrained_models/ (STUDIO_MODELS_DIR)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    from core.loading import models_dir  # imports diffusers: only when a name has to be looked up

    named = models_dir() / spec
    return named if named.is_dir() else path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.checkpoint_export",
        description="Write a diffusers-format SD 1.x model folder as one original-format (LDM) .safetensors "
                    "checkpoint, loadable by AUTOMATIC1111, ComfyUI and diffusers' from_single_file.")
    parser.add_argument("folder", help="diffusers model folder, or a model name under pretrained_models/")
    parser.add_argument("out", help="the .safetensors file to write")
    parser.add_argument("--dtype", default="keep", choices=["keep", *DTYPES],
                        help="precision of the written weights (default: as stored; fp16 halves the file)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        path = export_single_file(_resolve_folder(args.folder), args.out, dtype=args.dtype, overwrite=args.force)
    except StudioError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USER_ERROR
    size = path.stat().st_size / 2**20
    sys.stdout.write(f"{path} ({size:.1f} MiB)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
