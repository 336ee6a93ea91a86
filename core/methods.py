"""The methods the engine runs and recipes replay, one line each.

Adding a method is one new module in ``core`` (its request: a frozen dataclass subclassing
:class:`core.requests.Sampling`; its runner: ``prepare -> Run.loop -> Run.finish`` of
:mod:`core.pipeline`) and one line in :data:`METHODS` (README: Add a method). Code outside the
package calls :func:`register_method` instead.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from .engine import RUNNERS, Runner
from .image_prompt import ImageGuidance, ImagePrompt
from .recipe import register_nested_class, register_request_kind

METHODS: tuple[tuple[str, str, str], ...] = (  # request kind, "module:RequestClass", "module:runner"
    ("txt2img", "requests:GenerationRequest", "engine:Engine.generate"),
    ("img2img", "requests:GenerationRequest", "engine:Engine.generate"),
    ("regions", "panorama:MultiDiffusionRequest", "panorama:run_multidiffusion"),
    ("panorama", "panorama:MultiDiffusionRequest", "panorama:run_multidiffusion"),
    ("stroke", "stroke_guidance:StrokeRequest", "stroke_guidance:run_stroke"),
    ("upscale", "tiled_refine:UpscaleRequest", "tiled_refine:run_upscale"),
)


def register_method(kind: str, request_class: type, runner: Runner) -> None:
    """Let ``Engine.run`` run requests whose ``kind`` is ``kind`` and recipes rebuild them."""
    RUNNERS[kind] = runner
    register_request_kind(kind, request_class)


def resolve(path: str) -> Any:
    """``"module:Name.attr"`` (a module of this package) -> the object."""
    module, _, name = path.partition(":")
    obj: Any = import_module(f".{module}", __package__)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


for _kind, _request_class, _runner in METHODS:
    register_method(_kind, resolve(_request_class), resolve(_runner))

register_nested_class(ImagePrompt)  # recipes rebuild image prompts (their images embedded)
register_nested_class(ImageGuidance)
