"""Sketch-to-art studio engine: Stable Diffusion loading, one denoising loop, and guidance
methods (stroke guidance, region fusion) on top. Never imports streamlit.

    from core import Engine, GenerationRequest
    engine = Engine.load(model="pretrained_models/sd15")
    result = engine.generate(GenerationRequest(prompt="a lighthouse at dusk", seed=1))
"""
from . import _compat  # noqa: F401  (first: quiets a harmless import warning)
from .engine import Engine, GenerationResult
from . import methods  # noqa: F401  (registers every method's request kind for run and replay)
from .errors import CancelledError, StudioError
from .loading import LoadOptions, available_models, default_model, load_model
from .outputs import replay, save_result
from .recipe import read_recipe
from .requests import GenerationRequest
from .sampling import ProgressEvent

__all__ = [
    "Engine", "GenerationResult", "GenerationRequest", "LoadOptions", "ProgressEvent", "StudioError",
    "CancelledError", "available_models", "default_model", "load_model", "read_recipe", "replay", "save_result",
]
