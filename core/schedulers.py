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
    if name is not None and not isinstance(name, str):
        raise StudioError(f"The scheduler must be a name, one of {', '.join(SCHEDULER_NAMES)}; got {name!r:.40}.")
    key = ALIASES.get((name or "").strip().lower(), (name or "").strip().lower())
    if key not in SCHEDULER_NAMES:
        raise StudioError(f"Unknown scheduler '{name}': choose one of {', '.join(SCHEDULER_NAMES)}.")
    return key


def make_scheduler(name: str, config: dict[str, Any], prediction_type: str = "epsilon", *,
                   steps: int | None = None, device: Any = None) -> SchedulerMixin:
    """A new scheduler of kind ``name`` built from the model's scheduler ``config``; with
    ``steps``, its timesteps set (StudioError if this scheduler cannot take that many).

    The engine's loop always hands the scheduler epsilon (v-prediction models are
    converted in the model's eps_fn), so ``prediction_type`` is overridden here.
    """
    scheduler = _build(name, config, prediction_type)
    if steps is not None and not _set_steps(scheduler, steps, device):
        raise StudioError(f"{steps} steps is more than the {sampler_label(name, config)} scheduler can take with "
                          f"this model (at most {max_steps(name, config)}): choose fewer steps.")
    return scheduler


def _set_steps(scheduler: SchedulerMixin, steps: int, device: Any = None) -> bool:
    """Set ``steps`` timesteps; False if the scheduler refuses or would index past its training
    schedule (e.g. 1000 'leading' steps with steps_offset=1 reach t=1000; LCM takes at most
    original_inference_steps)."""
    try:
        scheduler.set_timesteps(steps, device=device)
    except (ValueError, IndexError, RuntimeError, ZeroDivisionError):
        return False
    timesteps = scheduler.timesteps
    if not len(timesteps) or float(timesteps.max()) > scheduler.config.num_train_timesteps - 1:
        return False
    # schedulers that find their place by looking the timestep up go wrong on a repeated one
    # (DPM++ at 1000 'linspace' steps rounds two timesteps to one and runs off its sigmas)
    return not hasattr(scheduler, "index_for_timestep") or len(set(timesteps.tolist())) == len(timesteps)


def max_steps(name: str, config: dict[str, Any]) -> int:
    """The most steps scheduler ``name`` can take with ``config`` (found by bisection; 0: none)."""
    lo, hi = 0, int(config.get("num_train_timesteps", 1000))
    while lo < hi:  # invariant: lo is 0 or a step count that works
        mid = (lo + hi + 1) // 2
        if _set_steps(_build(name, config), mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def check_steps(name: str, config: dict[str, Any], steps: int) -> None:
    """StudioError, naming the maximum, if scheduler ``name`` cannot take ``steps`` with ``config``."""
    make_scheduler(name, config, steps=steps)


def _build(name: str, config: dict[str, Any], prediction_type: str = "epsilon") -> SchedulerMixin:
    key = canonical_scheduler_name(name)
    if key == "default":
        cls = getattr(diffusers, config.get("_class_name", "DDIMScheduler"), None)
        if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
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
