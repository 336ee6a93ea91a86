"""Recipes: every input of a result, embedded in its PNG, so ``replay`` can remake it.

A PNG holds two text chunks: ``parameters`` (A1111's format, read by other tools) and
``recipe`` (JSON of the request, with input images embedded as base64 PNG and their
SHA-256). Replaying a recipe on the same device regenerates the identical image.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
import io
import json
import os
import secrets
import types
import typing
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from .errors import StudioError
from .inputs import open_image, parse_json, png_text
from .requests import LIMIT, is_int, show

RECIPE_VERSION = 1
MAX_RECIPE_BYTES = 64 * 2**20  # a recipe's JSON, embedded images included (4096x2048 noise is ~35 MB)
# kind -> request class (core.methods registers every method)
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


def record_to_image(record: Any) -> Image.Image:
    """An embedded image: base64 checked, checksum checked, size checked from its header before
    decoding, decoded (proving it is an image), converted as every input image is (greys kept)."""
    what = "The recipe's embedded image"
    if not (isinstance(record, dict) and set(record) == {"sha256", "png_base64"}
            and all(isinstance(v, str) for v in record.values())):
        raise StudioError(f"{what} must be {{\"sha256\": ..., \"png_base64\": ...}}: the recipe was edited, "
                          "it cannot be replayed.")
    try:
        data = base64.b64decode(record["png_base64"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise StudioError(f"{what} is not valid base64: the recipe is damaged, it cannot be replayed.") from exc
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise StudioError(f"{what} is damaged (checksum mismatch): it cannot be replayed.")
    return open_image(data, what, grey=True, formats=("PNG",))


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


# --- reading a recipe: a schema from the request classes' own annotations ----------------------
#
# A recipe is untrusted (anyone can edit a PNG's text). It can only name registered request
# kinds and registered nested dataclasses; images must be embedded; unknown fields are refused;
# every value's type and range is then checked by the request's own __post_init__; and limit
# fields (``limit_field``) are never raised above the local default.


def _edited(message: str) -> StudioError:
    return StudioError(f"{message}: the recipe was edited or made by another version; it cannot be replayed.")


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(value: Any, hint: Any, where: str, classes: dict[str, type]) -> Any:
    """A JSON value -> the Python value for a field annotated ``hint`` (structure only:
    images, nested dataclasses and tuples; plain values are left to __post_init__)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        structured = [a for a in options if _is_structured(a)]
        return _decode(value, structured[0] if structured else options[0], where, classes)
    if hint is Image.Image:
        if not (isinstance(value, dict) and set(value) == {"__image__"}):
            raise _edited(f"The recipe's {where} must be an embedded image, got {show(value)}")
        return record_to_image(value["__image__"])
    if origin is tuple:
        if not isinstance(value, list):
            raise _edited(f"The recipe's {where} must be a list, got {show(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(v, args[0], f"{where}[{i}]", classes) for i, v in enumerate(value))
        if len(value) != len(args):
            raise _edited(f"The recipe's {where} must have {len(args)} items, got {len(value)}")
        return tuple(_decode(v, a, f"{where}[{i}]", classes) for i, (v, a) in enumerate(zip(value, args)))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, where, classes)
    if isinstance(value, (dict, list)):
        raise _edited(f"The recipe's {where} must be a plain value, got {show(value)}")
    return value


def _is_structured(hint: Any) -> bool:
    return hint is Image.Image or typing.get_origin(hint) is tuple or (
        isinstance(hint, type) and dataclasses.is_dataclass(hint))


def _build(cls: type, data: Any, where: str, classes: dict[str, type]) -> Any:
    """A registered dataclass from its JSON object: unknown or missing fields refused, limits local."""
    nested = where != "request"
    if nested and (cls not in classes.values()):
        raise _edited(f"The recipe's {where} names {cls.__name__}, which recipes may not build")
    if not isinstance(data, dict):
        raise _edited(f"The recipe's {where} must be an object, got {show(data)}")
    if nested and data.get("__dataclass__") != cls.__name__:
        raise _edited(f"The recipe's {where} must be a {cls.__name__}, got {show(data.get('__dataclass__'))}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    given = {k: v for k, v in data.items() if not (nested and k == "__dataclass__")}
    unknown = sorted(str(k) for k in set(given) - set(fields))
    if unknown:
        raise _edited(f"The recipe's {where} has unknown field(s) {', '.join(show(k) for k in unknown[:5])}")
    missing = [name for name, f in fields.items() if name not in given and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise _edited(f"The recipe's {where} lacks field(s) {', '.join(missing)}")
    hints = _hints(cls)
    values = {k: _decode(v, hints[k], f"{where}.{k}" if nested else k, classes) for k, v in given.items()}
    for name, f in fields.items():  # a recipe may lower a limit, never raise it
        if f.metadata.get(LIMIT) and is_int(values.get(name)) and values[name] > f.default:
            values[name] = f.default
    return cls(**values)


def request_from_recipe(recipe: Any, classes: dict[str, type] | None = None) -> Any:
    """Rebuild the request a recipe was made from. ``classes`` names more nested dataclasses."""
    if not isinstance(recipe, dict):
        raise _edited(f"The recipe must be a JSON object, got {show(recipe)}")
    version, kind = recipe.get("version"), recipe.get("kind")
    if version != RECIPE_VERSION or not isinstance(version, int) or not isinstance(kind, str) \
            or kind not in REQUEST_KINDS:
        raise StudioError(f"Unsupported recipe (version {show(version)}, kind {show(kind)}): "
                          f"it was made by another version of the studio (this one reads version {RECIPE_VERSION}, "
                          f"kinds {', '.join(sorted(REQUEST_KINDS))}).")
    request = _build(REQUEST_KINDS[kind], recipe.get("request"), "request", {**NESTED_CLASSES, **(classes or {})})
    if request.kind != kind:
        raise _edited(f"The recipe says kind {kind!r} but its request is of kind {request.kind!r}")
    return request


def recipe_index(recipe: dict[str, Any], request: Any) -> int:
    """Which image of the request's batch the recipe is of (checked against the batch size)."""
    index = recipe.get("index", 0)
    count = getattr(request, "num_images", 1)
    if not is_int(index) or not 0 <= index < count:
        raise _edited(f"The recipe's image index must be a whole number from 0 to {count - 1}, got {show(index)}")
    return int(index)


def parameters_text(prompt: str, negative: str, settings: dict[str, Any]) -> str:
    """A1111's ``parameters`` format: prompt, negative prompt, then 'Key: value' pairs."""
    pairs = ", ".join(f"{k}: {v}" for k, v in settings.items() if v is not None)
    lines = [prompt] + ([f"Negative prompt: {negative}"] if negative else []) + [pairs]
    return "\n".join(lines)


def save_png(image: Image.Image, path: str | Path, recipe: dict[str, Any], parameters: str) -> Path:
    """Write ``image`` with both chunks, atomically (a temp file renamed into place).

    The file gets the usual mode (0666 less the umask), as any file the user creates."""
    path = Path(path)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    info.add_itxt("recipe", json.dumps(recipe, separators=(",", ":")), zip=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, unlike mkstemp's 0600
        with os.fdopen(fd, "wb") as file:
            image.save(file, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except OSError as exc:
        raise StudioError(f"Cannot write {path} ({exc.strerror or exc}): choose another output path.") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The JSON recipe embedded in a PNG written by :func:`save_png` (read from the PNG's
    chunks, size checked from its header; the pixels are never decoded)."""
    text = png_text(path, "recipe", MAX_RECIPE_BYTES)
    if not text:
        raise StudioError(f"{path} has no studio recipe: only PNGs saved by this studio can be replayed.")
    return parse_json(text, f"The recipe in {path}", "it is damaged and cannot be replayed")
