"""Save results with their recipes, and replay a saved PNG."""
from __future__ import annotations

import os
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image

from .engine import Engine, GenerationResult
from .errors import StudioError
from .loading import LoadOptions, ModelBundle, lora_sha256, resolve_lora
from .recipe import make_recipe, parameters_text, read_recipe, recipe_index, request_from_recipe, save_png
from .requests import is_number, show
from .sampling import ProgressCallback
from .schedulers import sampler_label


def model_record(bundle: ModelBundle) -> dict[str, Any]:
    """What a recipe records of the model: where it came from, and the LoRA fused into it (if any:
    file name, location, SHA-256 prefix and scale, so a replay can check it has the same one)."""
    record: dict[str, Any] = {"name": bundle.name, "location": bundle.location, "source": bundle.source}
    if bundle.lora is not None:
        record["lora"] = bundle.lora.record()
    return record


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
        "Lora hashes": f'"{Path(bundle.lora.file).stem}: {bundle.lora.sha256}"' if bundle.lora else None,
        "Lora scale": f"{bundle.lora.scale:g}" if bundle.lora else None,
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


MAX_NAME_BYTES = 200  # file systems allow 255, and save_png writes a temp file with a longer name first


def check_output(out: str | Path, count: int = 1) -> list[Path]:
    """The output paths, checked before any work starts: each must be a .png that is not a
    folder, whose folder is (or can be created as) a writable folder, not under a file."""
    paths = output_paths(out, count)
    for path in paths:
        if len(os.fsencode(path.name)) > MAX_NAME_BYTES:
            raise StudioError(f"Output file name {path.name[:40]}... is too long: use at most {MAX_NAME_BYTES} "
                              "characters.")
        if path.is_dir():
            raise StudioError(f"Output {path} is a folder: give a file name, e.g. {path / 'image.png'}.")
    folder = paths[0].parent.absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise StudioError(f"Output {paths[0]} is under {existing}, which is a file, not a folder: choose another --out.")
    _check_writable(existing, paths[0])
    return paths


def _check_writable(folder: Path, out: Path) -> None:
    """Create and remove a probe file in ``folder`` (os.access is wrong for root and ACLs)."""
    probe = folder / f".studio-write-probe-{secrets.token_hex(6)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise StudioError(f"Cannot write {out}: folder {folder} is not writable ({exc.strerror or exc}); "
                          "choose another --out.") from exc
    os.unlink(probe)


def save_result(result: GenerationResult, bundle: ModelBundle, out: str | Path) -> list[Path]:
    """Write every image of ``result`` with its recipe; returns the paths written."""
    paths = output_paths(out, len(result.images))
    for i, (image, path) in enumerate(zip(result.images, paths)):
        recipe = make_recipe(result.request, model_record(bundle), i, result.seeds)
        save_png(image, path, recipe, parameters_for(result, bundle, i))
    return paths


def replay_options(recipe: dict[str, Any], base: LoadOptions) -> LoadOptions:
    """Load options for a recipe's model: its saved location if present, else its name; with the
    LoRA it ran with (see :func:`replay_lora`)."""
    model = recipe.get("model", {})
    if not base.model:
        if not (isinstance(model, dict)
                and all(isinstance(model.get(k, ""), str) for k in ("name", "location", "source"))):
            raise StudioError("The recipe's model record is damaged (name, location and source must be text): "
                              "choose the model with --model.")
        location = model.get("location")
        spec = location if location and Path(location).exists() else model.get("name") if model.get("source") != "hub" else location
        base = LoadOptions(**{**base.__dict__, "model": spec})
    return replay_lora(model.get("lora") if isinstance(model, dict) else None, base)


def replay_lora(record: Any, options: LoadOptions) -> LoadOptions:
    """``options`` with the recipe's LoRA at its scale: the file at its saved location, or the one
    ``options`` names (a moved file). Its SHA-256 must match, checked before any model loads: an
    image made with a LoRA is not remade without it, nor with another."""
    if record is None:
        if options.lora:
            raise StudioError("The recipe was made without a LoRA: replay it without --lora.")
        return options
    if not (isinstance(record, dict) and all(isinstance(record.get(k), str) for k in ("file", "location", "sha256"))
            and is_number(record.get("scale"))):
        raise StudioError("The recipe's LoRA record is damaged (file, location, sha256 and scale): the recipe was "
                          "edited, it cannot be replayed.")
    file, sha, scale = record["file"], record["sha256"], record["scale"]
    made = f"LoRA {show(file)} (sha256 {show(sha)}) at scale {show(scale)}"
    if options.lora and options.lora_scale != scale:
        raise StudioError(f"The recipe was made with {made}: give --lora FILE:{show(scale)}.")
    location = options.lora or record["location"]
    if not options.lora and not Path(location).is_file():
        raise StudioError(f"The recipe was made with {made}, which is no longer at {location}: give its file with "
                          "--lora FILE.")
    path = resolve_lora(location)
    if lora_sha256(path) != sha:
        raise StudioError(f"LoRA {path} (sha256 {lora_sha256(path)}) is not the one the recipe was made with "
                          f"({made}): give that file with --lora FILE.")
    return replace(options, lora=str(path), lora_scale=float(scale))


def replay(path: str | Path, base: LoadOptions | None = None,
           callback: ProgressCallback | None = None) -> tuple[Image.Image, GenerationResult, Engine]:
    """Regenerate the image saved at ``path`` from its recipe (checked whole before the model loads)."""
    recipe = read_recipe(path)
    request = request_from_recipe(recipe)
    index = recipe_index(recipe, request)
    engine = Engine.load(replay_options(recipe, base or LoadOptions()))
    result = engine.run(request, callback)
    return result.images[index], result, engine
