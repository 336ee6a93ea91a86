"""Recipes: every input of a result, embedded in its PNG, so ``replay`` can remake it.

A PNG holds two text chunks: ``parameters`` (A1111's format, read by other tools) and
``recipe`` (JSON of the request, with input images embedded as base64 PNG and their
SHA-256). Replaying a recipe on the same device regenerates the identical image.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from .errors import StudioError

RECIPE_VERSION = 1
# kind -> request class; each method registers its own (see register_request_kind)
REQUEST_KINDS: dict[str, type] = {}
# dataclass name -> class, for dataclasses nested in requests (see register_nested_class)
NESTED_CLASSES: dict[str, type] = {}


def register_request_kind(kind: str, cls: type) -> None:
    REQUEST_KINDS[kind] = cls


def register_nested_class(cls: type) -> None:
    """Let recipes rebuild ``cls`` (a dataclass held inside a request) by its name."""
    NESTED_CLASSES[cls.__name__] = cls


def image_to_record(image: Image.Image) -> dict[str, str]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    return {"sha256": hashlib.sha256(data).hexdigest(), "png_base64": base64.b64encode(data).decode("ascii")}


def record_to_image(record: dict[str, str]) -> Image.Image:
    data = base64.b64decode(record["png_base64"])
    if hashlib.sha256(data).hexdigest() != record.get("sha256"):
        raise StudioError("The recipe's embedded image is damaged (checksum mismatch): it cannot be replayed.")
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()


def _encode_value(value: Any) -> Any:
    if isinstance(value, Image.Image):
        return {"__image__": image_to_record(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__dataclass__": type(value).__name__,
                **{f.name: _encode_value(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, (list, tuple)):
        return [_encode_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode_value(v) for k, v in value.items()}
    return value


def make_recipe(request: Any, model: dict[str, Any], index: int, seeds: list[int]) -> dict[str, Any]:
    """The JSON recipe of image ``index`` of a request's result."""
    kind = request.kind
    if kind not in REQUEST_KINDS:
        raise RuntimeError(f"request kind {kind!r} is not registered for recipes")
    return {
        "version": RECIPE_VERSION, "kind": kind, "model": model, "index": index, "seed": seeds[index],
        "request": {f.name: _encode_value(getattr(request, f.name)) for f in dataclasses.fields(request)},
    }


def _decode_value(value: Any, classes: dict[str, type]) -> Any:
    if isinstance(value, dict):
        if "__image__" in value:
            return record_to_image(value["__image__"])
        if "__dataclass__" in value:
            cls = classes[value["__dataclass__"]]
            return cls(**{k: _decode_value(v, classes) for k, v in value.items() if k != "__dataclass__"})
        return {k: _decode_value(v, classes) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_value(v, classes) for v in value]
    return value


def request_from_recipe(recipe: dict[str, Any], classes: dict[str, type] | None = None) -> Any:
    """Rebuild the request a recipe was made from. ``classes`` names nested dataclasses."""
    if recipe.get("version") != RECIPE_VERSION or recipe.get("kind") not in REQUEST_KINDS:
        raise StudioError(f"Unsupported recipe (version {recipe.get('version')}, kind {recipe.get('kind')}): "
                          "it was made by another version of the studio.")
    cls = REQUEST_KINDS[recipe["kind"]]
    fields = {k: _decode_value(v, {**NESTED_CLASSES, **(classes or {})}) for k, v in recipe["request"].items()}
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return cls(**fields)


def parameters_text(prompt: str, negative: str, settings: dict[str, Any]) -> str:
    """A1111's ``parameters`` format: prompt, negative prompt, then 'Key: value' pairs."""
    pairs = ", ".join(f"{k}: {v}" for k, v in settings.items() if v is not None)
    lines = [prompt] + ([f"Negative prompt: {negative}"] if negative else []) + [pairs]
    return "\n".join(lines)


def save_png(image: Image.Image, path: str | Path, recipe: dict[str, Any], parameters: str) -> Path:
    """Write ``image`` with both chunks, atomically (a temp file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    info.add_itxt("recipe", json.dumps(recipe, separators=(",", ":")), zip=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        image.save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The JSON recipe embedded in a PNG written by :func:`save_png`."""
    try:
        with Image.open(path) as image:
            image.load()
            text = image.info.get("recipe") or getattr(image, "text", {}).get("recipe")
    except FileNotFoundError as exc:
        raise StudioError(f"{path} not found: check the path.") from exc
    except OSError as exc:
        raise StudioError(f"Cannot read {path}: not a PNG image.") from exc
    if not text:
        raise StudioError(f"{path} has no studio recipe: only PNGs saved by this studio can be replayed.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StudioError(f"The recipe in {path} is damaged (not valid JSON): it cannot be replayed.") from exc

