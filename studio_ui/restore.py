"""Gallery -> editor: put a saved result's UI state back into the session, exactly.

A page saves ``ui = {"page", "seed", "sidebar", "settings", "canvas", "rows", "images"}``
with each job (see the pages); :func:`restore` writes it back into ``st.session_state``
(call it from a button callback or before switching page) and returns the page's file.
"""
from __future__ import annotations

import binascii
from typing import Any

import streamlit as st

from core.colors import to_hex
from core.errors import StudioError
from core.inputs import open_image
from core.loading import available_models
from core.requests import MAX_SEED

from .canvas import b64, unb64
from .gallery import GalleryItem
from .site import PAGE_FILES, PAGE_SETTINGS
from .widgets import reload_canvas, set_rows

ss = st.session_state
SIDEBAR_TYPES = {"model": str, "model_path": str, "device": str, "dtype": str, "attention_slicing": bool,
                 "vae_tiling": bool, "cpu_offload": bool}


def sidebar_state() -> dict[str, Any]:
    """The sidebar's model choice, saved with each result."""
    return {k: ss.get(f"sb.{k}") for k in ("model", "model_path", "device", "dtype", "attention_slicing",
                                           "vae_tiling", "cpu_offload")}


def ui_state(page: str, settings: tuple[str, ...], **parts: Any) -> dict[str, Any]:
    """What a page saves with a job so the gallery can reopen it: seed, sidebar, the page's
    ``settings`` keys and table rows, plus ``parts`` (canvas, images, ...)."""
    return {"page": page, "seed": int(ss["seed"]), "sidebar": sidebar_state(),
            "settings": {k: ss.get(f"{page}.{k}") for k in settings},
            "rows": dict(ss.get(f"{page}.rows") or {}), "image_prompt": image_prompt_state(page), **parts}


IMAGE_PROMPT_SETTINGS = {"ip_weight": (int, float), "ip_scale": (int, float), "ip_method": str}


def image_prompt_state(page: str) -> dict[str, Any]:
    """The page's Image prompt expander (widgets.image_prompt_controls): references and settings."""
    regions = ss.get(f"{page}.ip_regions") or {}
    return {"png": b64(ss.get(f"{page}.ip_png")), "regions": {c: b64(png) for c, png in regions.items()},
            **{k: ss.get(f"{page}.{k}") for k in IMAGE_PROMPT_SETTINGS}}


def restore_image_prompt(page: str, state: Any) -> None:
    """Put a saved Image prompt expander back (untrusted: only real images and sane values)."""
    if not isinstance(state, dict):
        return
    ss[f"{page}.ip_png"] = saved_image(state.get("png"))
    regions = {}
    for colour, text in (state.get("regions").items() if isinstance(state.get("regions"), dict) else ()):
        png = saved_image(text)
        try:
            colour = to_hex(colour)
        except (StudioError, ValueError, TypeError):
            continue
        if png is not None and len(regions) < 64:
            regions[colour] = png
    ss[f"{page}.ip_regions"] = regions
    for key, kind in IMAGE_PROMPT_SETTINGS.items():
        value = state.get(key)
        if isinstance(value, kind) and not isinstance(value, bool) and _plain(value):
            ss[f"{page}.{key}"] = value
    ss[f"{page}.ip_rev"] = int(ss.get(f"{page}.ip_rev", 0)) + 1


def canvas_state(page: str, drawing: Any, dims: tuple[int, int], **extra: Any) -> dict[str, Any]:
    """The canvas part of :func:`ui_state`: the drawing, its size, background and raster."""
    raster = ss.get(f"{page}.raster")
    return {"drawing": drawing, "dims": list(dims), "background_png": b64(ss.get(f"{page}.bg")),
            "raster_png": b64(raster[1]) if raster else None, **extra}


IMAGE_PARTS = ("map_png",)  # the uploaded images a page saves under "images"


def _plain(value: Any) -> bool:
    """A value a settings widget can hold: a JSON scalar, or a short list of them."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return not isinstance(value, str) or len(value) <= 20_000
    return isinstance(value, list) and len(value) <= 64 and all(_plain(v) and not isinstance(v, list) for v in value)


def saved_image(text: Any) -> bytes | None:
    """Bytes of an embedded image that really is one (else None: a sidecar may be edited or foreign)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        data = unb64(text)
        open_image(data, "A saved image")
    except (StudioError, ValueError, binascii.Error):
        return None
    return data


def _rows(rows: Any) -> dict[str, dict[str, Any]]:
    """Region table rows keyed by colour, each a dict of plain values; anything else is dropped."""
    out: dict[str, dict[str, Any]] = {}
    for colour, row in (rows.items() if isinstance(rows, dict) else ()):
        try:
            colour = to_hex(colour)
        except (StudioError, ValueError, TypeError):
            continue
        if isinstance(row, dict):
            out[colour] = {str(k): v for k, v in row.items() if _plain(v)}
    return out


def restore_ui(page: str, ui: dict[str, Any]) -> None:
    """Write a page's saved ``ui`` state (see :func:`ui_state`) back into the session; the
    page remounts its canvas and tables from it on its next run. A sidecar is untrusted (it
    can be edited, or come from someone else): only the page's own settings of plain types,
    a seed in range, real images and well-formed drawings and rows are taken; widgets then
    reset out-of-range values to their defaults (``shared.keep_valid``)."""
    if not isinstance(ui, dict):
        return
    settings = ui.get("settings")
    allowed = PAGE_SETTINGS.get(page, ())
    for key, value in (settings.items() if isinstance(settings, dict) else ()):
        if key in allowed and _plain(value):
            ss[f"{page}.{key}"] = value
    seed = ui.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED:
        ss["seed"] = seed
    sidebar = ui.get("sidebar") or {}
    if isinstance(sidebar, dict) and sidebar.get("model") in available_models():
        for key, value in sidebar.items():
            if isinstance(value, SIDEBAR_TYPES.get(key, ())):  # a sidecar may be edited: only sane values
                ss[f"sb.{key}"] = value
    canvas = ui.get("canvas")
    if isinstance(canvas, dict):
        dims = canvas.get("dims")
        if isinstance(dims, list) and len(dims) == 2 and all(isinstance(d, int) and 8 <= d <= 4096 for d in dims):
            ss[f"{page}.dims"] = tuple(dims)
        drawing = canvas.get("drawing")
        if not (isinstance(drawing, dict) and isinstance(drawing.get("objects", []), list)
                and all(isinstance(o, dict) for o in drawing.get("objects", []))):
            drawing = {"objects": []}
        reload_canvas(page, drawing, background=saved_image(canvas.get("background_png")),
                      raster=saved_image(canvas.get("raster_png")))
    if ui.get("rows") is not None:
        set_rows(page, _rows(ui["rows"]))
    restore_image_prompt(page, ui.get("image_prompt"))
    images = ui.get("images")
    for key in IMAGE_PARTS:
        if isinstance(images, dict) and key in images:
            ss[f"{page}.{key}"] = saved_image(images[key])
    ss[f"{page}.upload_rev"] = int(ss.get(f"{page}.upload_rev", 0)) + 1
    ss[f"{page}.upload_id"] = None
    ss["_entered"] = None  # the page remounts its canvas and tables from this state


def restore(item: GalleryItem) -> str | None:
    """Restore ``item``'s page state; returns the page file to switch to (None: not restorable)."""
    ui = item.ui
    page = ui.get("page") or item.page
    if page not in PAGE_FILES:
        return None
    restore_ui(page, ui)
    ss[f"{page}.results"] = [item.id]
    ss[f"{page}.message"] = ("info", f"Opened from the gallery: “{item.title[:80]}”. Everything is as it was; "
                                     "press Generate to make it again or change it first.")
    return PAGE_FILES[page]
