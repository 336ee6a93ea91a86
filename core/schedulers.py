"""Schedulers by name. A fresh scheduler is built from the model's config per request."""
from __future__ import annotations

from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
import diffusers

from .errors import StudioError

# name -> (class, config overrides, A1111 sampler name)
SCHEDULERS: dict[str, tuple[type, dict[str, Any], str]] = {
    "ddim": (DDIMScheduler, {}, "DDIM"),
    "euler": (EulerDiscreteScheduler, {}, "Euler"),
    "euler_a": (EulerAncestralDiscreteScheduler, {}, "Euler a"),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}, "DPM++ 2M"),
    "lcm": (LCMScheduler, {}, "LCM"),
}
ALIASES = {"euler-a": "euler_a", "euler a": "euler_a", "dpm++2m": "dpmpp_2m", "dpm++ 2m": "dpmpp_2m",
           "dpmpp-2m": "dpmpp_2m", "model": "default", "": "default"}
SCHEDULER_NAMES = ("default", *SCHEDULERS)


def canonical_scheduler_name(name: str | None) -> str:
    """'default' or one of SCHEDULERS, accepting common spellings; StudioError otherwise."""
    key = ALIASES.get((name or "").strip().lower(), (name or "").strip().lower())
    if key not in SCHEDULER_NAMES:
        raise StudioError(f"Unknown scheduler '{name}': choose one of {', '.join(SCHEDULER_NAMES)}.")
    return key


def make_scheduler(name: str, config: dict[str, Any], prediction_type: str = "epsilon") -> SchedulerMixin:
    """A new scheduler of kind ``name`` built from the model's scheduler ``config``.

    The engine's loop always hands the scheduler epsilon (v-prediction models are
    converted in the model's eps_fn), so ``prediction_type`` is overridden here.
    """
    key = canonical_scheduler_name(name)
    if key == "default":
        cls = getattr(diffusers, config.get("_class_name", "DDIMScheduler"), None)
        if cls is None or not issubclass(cls, SchedulerMixin):
            raise StudioError(f"The model's scheduler '{config.get('_class_name')}' is not known to diffusers: "
                              "pick one with --scheduler.")
        overrides: dict[str, Any] = {}
    else:
        cls, overrides = SCHEDULERS[key][0], dict(SCHEDULERS[key][1])
    return cls.from_config(config, **overrides, prediction_type=prediction_type)


def sampler_label(name: str, config: dict[str, Any]) -> str:
    """The A1111-style sampler name for the recipe's parameters text."""
    key = canonical_scheduler_name(name)
    if key == "default":
        return str(config.get("_class_name", "default")).replace("Scheduler", "")
    return SCHEDULERS[key][2]
