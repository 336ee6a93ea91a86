"""Gallery -> editor: put a saved result's UI state back into the session, exactly.

A page saves ``ui = {"page", "seed", "sidebar", "settings", "canvas", "rows", "images"}``
with each job (see the pages); :func:`restore` writes it back into ``st.session_state``
(call it from a button callback or before switching page) and returns the page's file.
"""
from __future__ import annotations

from typing import Any

import streamlit as st

from core.loading import available_models

from .canvas import b64, unb64
from .gallery import GalleryItem
from .site import PAGE_FILES
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
            "rows": dict(ss.get(f"{page}.rows") or {}), **parts}


def canvas_state(page: str, drawing: Any, dims: tuple[int, int], **extra: Any) -> dict[str, Any]:
    """The canvas part of :func:`ui_state`: the drawing, its size, background and raster."""
    raster = ss.get(f"{page}.raster")
    return {"drawing": drawing, "dims": list(dims), "background_png": b64(ss.get(f"{page}.bg")),
            "raster_png": b64(raster[1]) if raster else None, **extra}


def restore_ui(page: str, ui: dict[str, Any]) -> None:
    """Write a page's saved ``ui`` state (see :func:`ui_state`) back into the session; the
    page remounts its canvas and tables from it on its next run."""
    for key, value in (ui.get("settings") or {}).items():
        ss[f"{page}.{key}"] = value
    if ui.get("seed") is not None:
        ss["seed"] = int(ui["seed"])
    sidebar = ui.get("sidebar") or {}
    if isinstance(sidebar, dict) and sidebar.get("model") in available_models():
        for key, value in sidebar.items():
            if isinstance(value, SIDEBAR_TYPES.get(key, ())):  # a sidecar may be edited: only sane values
                ss[f"sb.{key}"] = value
    canvas = ui.get("canvas")
    if canvas:
        if canvas.get("dims"):
            ss[f"{page}.dims"] = tuple(canvas["dims"])
        reload_canvas(page, canvas.get("drawing") or {"objects": []}, background=unb64(canvas.get("background_png")),
                      raster=unb64(canvas.get("raster_png")))
    if ui.get("rows") is not None:
        set_rows(page, ui["rows"])
    for key, value in (ui.get("images") or {}).items():
        ss[f"{page}.{key}"] = unb64(value)
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
