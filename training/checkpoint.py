"""Checkpoints in safetensors + JSON only (no pickle), and an EMA of model weights.

A checkpoint is a folder ``OUT/checkpoints/{stage}-{step:07d}/`` holding
``{name}.safetensors`` for each model and EMA, ``optimizer.safetensors`` +
``optimizer.json`` for the optimizer, and ``state.json`` (stage, step, settings).
It is written to a temporary folder and renamed, so a crash never leaves half of one.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

STAGES = ("vae", "unet", "decoder", "tiny", "upscaler", "clip", "ip_adapter")  # tiny: training.tiny_decoder; upscaler: training.upscaler;
# clip: training.clip


class EMA:
    """Exponential moving average of a module's floating point parameters.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so
    early weights do not linger in short runs.
    """

    def __init__(self, module: torch.nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {k: p.detach().float().clone() for k, p in module.named_parameters()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        d = self.current_decay()
        for k, p in module.named_parameters():
            self.shadow[k].mul_(d).add_(p.detach().float(), alpha=1 - d)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module) -> None:
        """Write the averaged weights into ``module``."""
        for k, p in module.named_parameters():
            p.copy_(self.shadow[k].to(p.dtype))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.contiguous() for k, v in self.shadow.items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        missing = set(self.shadow) - set(tensors)
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} tensors, e.g. {sorted(missing)[0]}")
        for k in self.shadow:
            self.shadow[k].copy_(tensors[k])
        self.updates = updates


def module_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict as contiguous CPU tensors (shared storage duplicated)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def optimizer_to_safetensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors and a JSON-able remainder."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_safetensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                               meta: dict) -> None:
    """Load what :func:`optimizer_to_safetensors` split."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for index, entry in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entry)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


@dataclass(frozen=True)
class CheckpointRef:
    """Where a checkpoint is and what it holds."""

    path: Path
    stage: str
    step: int


def checkpoint_name(stage: str, step: int) -> str:
    return f"{stage}-{step:07d}"


def list_checkpoints(folder: Path) -> list[CheckpointRef]:
    """Complete checkpoints in ``folder``, oldest first (by stage, then step)."""
    refs = []
    if folder.exists():
        for path in folder.iterdir():
            stage, _, step = path.name.partition("-")
            if stage in STAGES and step.isdigit() and (path / "state.json").exists():
                refs.append(CheckpointRef(path, stage, int(step)))
    return sorted(refs, key=lambda r: (STAGES.index(r.stage), r.step))


def latest_checkpoint(folder: Path) -> CheckpointRef | None:
    refs = list_checkpoints(folder)
    return refs[-1] if refs else None


def resume_step(folder: Path, stage: str, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                resume: bool, log=print) -> int:
    """The step a one-module trainer continues from: the last ``stage`` checkpoint in ``folder``
    loaded into ``module`` and ``optimizer`` (``resume``), else 0."""
    ref = latest_checkpoint(folder) if resume else None
    if ref is None or ref.stage != stage:
        return 0
    step = int(load_checkpoint(ref, {stage: module}, {}, optimizer)["step"])
    log(f"{stage}: resumed at step {step}")
    return step


def save_checkpoint(folder: Path, stage: str, step: int, modules: dict[str, torch.nn.Module],
                    emas: dict[str, EMA], optimizer: torch.optim.Optimizer, state: dict,
                    keep: int = 2) -> Path:
    """Write a checkpoint atomically and prune old ones of the same stage (keeping ``keep``)."""
    final = folder / checkpoint_name(stage, step)
    tmp = folder / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, module in modules.items():
        save_file(module_tensors(module), str(tmp / f"{name}.safetensors"))
    for name, ema in emas.items():
        save_file(ema.state_tensors(), str(tmp / f"ema_{name}.safetensors"))
    tensors, meta = optimizer_to_safetensors(optimizer)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(meta), encoding="utf-8")
    full_state = {**state, "stage": stage, "step": step,
                  "ema_updates": {k: e.updates for k, e in emas.items()}}
    (tmp / "state.json").write_text(json.dumps(full_state, indent=2), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    _prune(folder, stage, keep)
    return final


def _prune(folder: Path, stage: str, keep: int) -> None:
    same = [r for r in list_checkpoints(folder) if r.stage == stage]
    for ref in same[:-keep] if keep > 0 else []:
        shutil.rmtree(ref.path, ignore_errors=True)


def load_checkpoint(ref: CheckpointRef, modules: dict[str, torch.nn.Module], emas: dict[str, EMA],
                    optimizer: torch.optim.Optimizer | None) -> dict:
    """Load weights, EMAs and optimizer state in place; returns the ``state.json`` dict."""
    state = json.loads((ref.path / "state.json").read_text(encoding="utf-8"))
    for name, module in modules.items():
        module.load_state_dict(load_file(str(ref.path / f"{name}.safetensors")))
    for name, ema in emas.items():
        ema.load_tensors(load_file(str(ref.path / f"ema_{name}.safetensors")),
                         int(state.get("ema_updates", {}).get(name, 0)))
    if optimizer is not None:
        meta = json.loads((ref.path / "optimizer.json").read_text(encoding="utf-8"))
        optimizer_from_safetensors(optimizer, load_file(str(ref.path / "optimizer.safetensors")), meta)
    return state
