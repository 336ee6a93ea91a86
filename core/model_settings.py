"""Recommended settings a model folder may carry, used where the person has not chosen.

A model folder may hold ``studio.json``::

    {"recommended": {"guidance_scale": 5.0, "steps": 30, "fidelity": 0.5, "fast_renderer": "linear"}}

(every key optional; ``fast_renderer`` is what GradOP+ fast uses when asked for "auto", for
a model whose tiny decoder costs nearly as much as its VAE). A model with an IP-Adapter made for
it recommends how image prompts act: ``"image_method": "ip-adapter", "ip_adapter": NAME,
"ip_adapter_scale": 1.0`` (``image_method`` "clip" is MGAD's CLIP guidance, the default). A folder used with an LCM-LoRA
recommends it with the settings it needs, the LoRA named relative to the folder::

    {"recommended": {"scheduler": "lcm", "steps": 4, "guidance_scale": 1.5,
                     "lora": "lcm_lora/pytorch_lora_weights.safetensors"}}

A LoRA file in the folder is never loaded for being there, only when recommended here or
asked for (``--lora``). The CLI uses these values for
flags left out, and the app for its sliders' first values; what a person sets always wins. A model whose best guidance differs
from SD's 7.5 (the bundled demo model paints some nights flat navy at 7.5) says so here.
The file comes with the model, so it is validated like any other input.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import StudioError
from .inputs import read_json_file
from .requests import check_int, check_range, check_text
from .schedulers import canonical_scheduler_name

SETTINGS_FILE = "studio.json"
EXAMPLE = '{"recommended": {"guidance_scale": 5.0, "steps": 30, "fidelity": 0.5}}'


@dataclass(frozen=True)
class Recommended:
    """Settings for a model; None: the caller's own default."""

    guidance_scale: float | None = None  # classifier-free guidance w
    steps: int | None = None  # sampling steps
    fidelity: float | None = None  # stroke guidance's fidelity slider (0..1)
    fast_renderer: str | None = None  # GradOP+ fast's renderer for renderer="auto": "linear" or "tiny"
    scheduler: str | None = None  # e.g. "lcm" for a model used with an LCM-LoRA
    lora: str | None = None  # a LoRA file in the folder (read_recommended makes the path absolute)
    lora_scale: float | None = None  # that LoRA's scale (None: 1)
    image_method: str | None = None  # how image prompts act: "clip" (MGAD guidance) or "ip-adapter"
    ip_adapter: str | None = None  # the IP-Adapter made for this model (a name or folder, core.ip_adapter)
    ip_adapter_scale: float | None = None  # its scale (None: 1)

    def __post_init__(self) -> None:
        if self.scheduler is not None:
            object.__setattr__(self, "scheduler", canonical_scheduler_name(self.scheduler))
        check_text("Recommended lora", self.lora, optional=True)
        if self.lora_scale is not None:
            check_range("Recommended lora_scale", self.lora_scale, 0, 4)
        if self.image_method is not None and self.image_method not in ("clip", "ip-adapter"):
            raise StudioError(f"Recommended image_method must be 'clip' or 'ip-adapter', got {self.image_method!r:.40}.")
        check_text("Recommended ip_adapter", self.ip_adapter, optional=True)
        if self.ip_adapter_scale is not None:
            check_range("Recommended ip_adapter_scale", self.ip_adapter_scale, 0, 5)
        if self.fast_renderer is not None and self.fast_renderer not in ("linear", "tiny"):
            raise StudioError(f"Recommended fast_renderer must be 'linear' or 'tiny', got {self.fast_renderer!r}.")
        if self.guidance_scale is not None:
            check_range("Recommended guidance_scale", self.guidance_scale, 0, 50)
        if self.steps is not None:
            check_int("Recommended steps", self.steps, 1, 1000)
        if self.fidelity is not None:
            check_range("Recommended fidelity", self.fidelity, 0, 1)

    def get(self, name: str, default: Any) -> Any:
        value = getattr(self, name)
        return default if value is None else value


def read_recommended(folder: str | Path) -> Recommended:
    """The folder's ``studio.json`` recommendations (none when the file is absent)."""
    path = Path(folder) / SETTINGS_FILE
    if not path.exists():
        return Recommended()
    data = read_json_file(path, "Model settings file", EXAMPLE)
    if not isinstance(data, dict) or set(data) - {"recommended"} or not isinstance(data.get("recommended", {}), dict):
        raise StudioError(f"Model settings file {path} must look like {EXAMPLE}.")
    values = data.get("recommended", {})
    known = {f.name for f in fields(Recommended)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise StudioError(f"Model settings file {path}: unknown setting(s) {', '.join(unknown)}; "
                          f"use {', '.join(sorted(known))}.")
    lora = values.get("lora")
    if isinstance(lora, str):  # relative to the folder, and inside it
        if Path(lora).is_absolute() or ".." in Path(lora).parts:
            raise StudioError(f"Model settings file {path}: lora must name a file inside the model folder, relative "
                              f"to it (e.g. \"lcm_lora/pytorch_lora_weights.safetensors\"), got {lora!r:.60}.")
        values = {**values, "lora": str(Path(folder).resolve() / lora)}
    try:
        return Recommended(**values)
    except StudioError as exc:
        raise StudioError(f"Model settings file {path}: {exc}") from exc


def recommended_for(model: str | None) -> Recommended:
    """Recommendations of a model spec (as the loader takes it) without loading the model;
    hub ids and single files have none."""
    from .loading import resolve_model

    source, location = resolve_model(model)
    return read_recommended(location) if source == "folder" else Recommended()
