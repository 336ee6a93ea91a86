"""Save results with their recipes, and replay a saved PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from .engine import Engine, GenerationResult
from .errors import StudioError
from .loading import LoadOptions, ModelBundle
from .recipe import make_recipe, parameters_text, read_recipe, request_from_recipe, save_png
from .sampling import ProgressCallback
from .schedulers import sampler_label


def model_record(bundle: ModelBundle) -> dict[str, str]:
    return {"name": bundle.name, "location": bundle.location, "source": bundle.source}


def parameters_for(result: GenerationResult, bundle: ModelBundle, index: int) -> str:
    """A1111-style parameters text for image ``index`` of ``result``."""
    req = result.request
    image = result.images[index]
    settings: dict[str, Any] = {
        "Steps": getattr(req, "steps", None),
        "Sampler": sampler_label(req.scheduler, bundle.scheduler_config) if hasattr(req, "scheduler") else None,
        "CFG scale": getattr(req, "guidance_scale", None),
        "Seed": result.seeds[index],
        "Size": f"{image.width}x{image.height}",
        "Model": bundle.name,
        "Denoising strength": req.strength if getattr(req, "init_image", None) is not None else None,
        "Method": req.kind,
    }
    return parameters_text(getattr(req, "prompt", ""), getattr(req, "negative_prompt", ""), settings)


def output_paths(out: str | Path, count: int) -> list[Path]:
    """``out`` for one image; ``stem-1.png`` .. ``stem-N.png`` for several."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise StudioError(f"Output {out} must be a .png file (the recipe is stored in PNG metadata).")
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i + 1}{out.suffix}") for i in range(count)]


def save_result(result: GenerationResult, bundle: ModelBundle, out: str | Path) -> list[Path]:
    """Write every image of ``result`` with its recipe; returns the paths written."""
    paths = output_paths(out, len(result.images))
    for i, (image, path) in enumerate(zip(result.images, paths)):
        recipe = make_recipe(result.request, model_record(bundle), i, result.seeds)
        save_png(image, path, recipe, parameters_for(result, bundle, i))
    return paths


def replay_options(recipe: dict[str, Any], base: LoadOptions) -> LoadOptions:
    """Load options for a recipe's model: its saved location if present, else its name."""
    if base.model:
        return base
    model = recipe.get("model", {})
    location = model.get("location")
    spec = location if location and Path(location).exists() else model.get("name") if model.get("source") != "hub" else location
    return LoadOptions(**{**base.__dict__, "model": spec})


def replay(path: str | Path, base: LoadOptions | None = None,
           callback: ProgressCallback | None = None) -> tuple[Image.Image, GenerationResult, Engine]:
    """Regenerate the image saved at ``path`` from its recipe."""
    recipe = read_recipe(path)
    request = request_from_recipe(recipe)
    engine = Engine.load(replay_options(recipe, base or LoadOptions()))
    result = engine.run(request, callback)
    index = int(recipe.get("index", 0))
    if index >= len(result.images):
        raise StudioError(f"The recipe in {path} names image {index + 1} of a batch of {len(result.images)}.")
    return result.images[index], result, engine
