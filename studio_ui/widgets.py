"""Page building blocks: brush controls, the drawing canvas with saved state, the
colour -> prompt table, and the size picker."""
from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from core.errors import StudioError
from core.inputs import has_alpha, open_image
from core.ip_adapter import DEFAULT_IP_ADAPTER

from .canvas import EMPTY_DRAWING, compose, image_from_bytes, object_count, png_bytes, render_drawing, scale_drawing
from core.colors import MapRegion, flatten, read_region_map, readable_name, region_label_image, swatch_data_url, to_hex
from .methods import ImagePromptSettings, RegionSettings, RegionSpec

ss = st.session_state

TOOLS = {"freedraw": ":material/brush: Brush", "line": ":material/horizontal_rule: Line",
         "rect": ":material/crop_square: Rect", "circle": ":material/circle: Circle",
         "polygon": ":material/pentagon: Polygon"}
SWATCHES = {  # preset colours (saturated and distinct: scribbles and region maps read best so)
    "red": "#e53935", "orange": "#fb8c00", "yellow": "#fdd835", "green": "#43a047", "teal": "#00897b",
    "blue": "#1e88e5", "purple": "#8e24aa", "pink": "#f06292", "brown": "#6d4c41", "black": "#212121",
    "eraser": "#ffffff",
}
CUSTOM = "custom"


def _pick(page: str, name: str) -> None:
    ss[f"{page}.swatch"] = name


def _palette_css(page: str, selected: str) -> str:
    rules = []
    for name, hexed in SWATCHES.items():
        key = f"st-key-{page}_sw_{name}"
        ring = "0 0 0 2px #fff, 0 0 0 4px var(--st-primary-color, #6d4aff)" if name == selected else "none"
        rules.append(f".{key} button {{ background: {hexed} !important; border: 1px solid #0003 !important; "
                     f"width: 1.75rem; height: 1.75rem; min-height: 1.75rem; padding: 0; border-radius: 50%; box-shadow: {ring}; }}")
    rules.append(f".st-key-{page}_sw_eraser button {{ background: repeating-linear-gradient(45deg, #fff 0 4px, "
                 f"#e5e5e5 4px 8px) !important; }}")
    ring = "0 0 0 2px #fff, 0 0 0 4px var(--st-primary-color, #6d4aff)" if selected == CUSTOM else "none"
    rules.append(f".st-key-{page}_custom_wrap [data-testid='stColorPickerBlock'] {{ box-shadow: {ring}; "
                 "border-radius: 6px; }")
    return "<style>" + "\n".join(rules) + "</style>"


BRUSH_RULES = {"tool": ("freedraw", TOOLS), "brush": (12, (1, 80)), "swatch": ("red", [*SWATCHES, CUSTOM]),
               "custom": ("#ff4081", None), "fill": (True, None)}  # for shared.keep_valid


def brush_controls(page: str, *, default_tool: str = "freedraw", default_size: int = 12,
                   default_swatch: str = "blue") -> tuple[str, int, str, bool]:
    """Tool, brush size, colour (preset palette, eraser, or any colour from the picker) and
    whether shapes are filled: returns (drawing_mode, stroke_width, colour hex, fill)."""
    from .shared import init_state

    init_state({f"{page}.tool": default_tool, f"{page}.brush": default_size, f"{page}.swatch": default_swatch,
                f"{page}.custom": "#ff4081", f"{page}.fill": True})
    if ss[f"{page}.swatch"] not in SWATCHES and ss[f"{page}.swatch"] != CUSTOM:
        ss[f"{page}.swatch"] = default_swatch
    st.segmented_control("Tool", list(TOOLS), format_func=TOOLS.get, key=f"{page}.tool", required=True,
                         persist_state="session", label_visibility="collapsed", width="stretch",
                         help="Polygon: click the corners, then click the first corner again to close it.")
    swatch = ss[f"{page}.swatch"]
    st.html(_palette_css(page, swatch))
    with st.container(horizontal=True, gap="xsmall", vertical_alignment="center", key=f"{page}_palette"):
        for name in SWATCHES:
            st.button("\u200b", key=f"{page}_sw_{name}", on_click=_pick, args=(page, name),
                      help="Eraser: paints the white background" if name == "eraser" else name.capitalize())
        with st.container(key=f"{page}_custom_wrap", width="content"):
            st.color_picker("Any colour", key=f"{page}.custom", persist_state="session", label_visibility="collapsed",
                            on_change=_pick, args=(page, CUSTOM), help="Any colour (click to choose)")
    a, b = st.columns([3, 2], vertical_alignment="center")
    a.slider("Brush size", 1, 80, key=f"{page}.brush", persist_state="session")
    b.toggle("Fill shapes", key=f"{page}.fill", persist_state="session",
             help="Rectangles, circles and polygons are filled with the colour.")
    color = ss[f"{page}.custom"] if swatch == CUSTOM else SWATCHES[swatch]
    tool = ss.get(f"{page}.tool") or default_tool
    return tool, int(ss[f"{page}.brush"]), color, bool(ss[f"{page}.fill"])


# --- canvas with state that survives reruns, page switches and gallery restores -------------

def _signature(drawing: dict[str, Any] | None) -> str:
    objects = (drawing or {}).get("objects", []) or []
    return hashlib.sha1(json.dumps(objects, sort_keys=True, default=str).encode()).hexdigest()


def reload_canvas(page: str, drawing: dict[str, Any] | None = None, *, background: bytes | None | str = "keep",
                  raster: bytes | None = None) -> None:
    """Remount the canvas showing ``drawing`` (None: keep the current one). Safe in callbacks."""
    drawing = ss.get(f"{page}.drawing") if drawing is None else drawing
    drawing = drawing if drawing is not None else dict(EMPTY_DRAWING)
    ss[f"{page}.initial"] = drawing
    ss[f"{page}.drawing"] = drawing
    if background != "keep":
        ss[f"{page}.bg"] = background
    if raster is not None:
        ss[f"{page}.raster"] = (_signature(drawing), raster)
    ss[f"{page}.mount"] = int(ss.get(f"{page}.mount", 0)) + 1


def clear_canvas(page: str) -> None:
    reload_canvas(page, dict(EMPTY_DRAWING), background=None)
    ss[f"{page}.upload_rev"] = int(ss.get(f"{page}.upload_rev", 0)) + 1


def drawing_canvas(page: str, *, width: int, height: int, tool: str, stroke_width: int, color: str,
                   fill: bool) -> tuple[Image.Image, dict[str, Any]]:
    """The canvas; returns (what is on it now as RGB at canvas size, its Fabric JSON)."""
    from streamlit_drawable_canvas import st_canvas

    from .shared import rev

    if f"{page}.initial" not in ss:
        reload_canvas(page, dict(EMPTY_DRAWING), background=None)
    dims = ss.get(f"{page}.dims")
    if dims is not None and tuple(dims) != (width, height):  # size changed: scale the drawing along
        reload_canvas(page, scale_drawing(ss[f"{page}.drawing"], width / dims[0], height / dims[1]))
    if ss.get(f"{page}.mounted_rev") != rev(page):  # page (re)entered: remount from the latest drawing
        reload_canvas(page)
        ss[f"{page}.mounted_rev"] = rev(page)
    ss[f"{page}.dims"] = (width, height)
    background = image_from_bytes(ss.get(f"{page}.bg"))
    fill_color = color if fill and tool != "line" else "rgba(0, 0, 0, 0)"
    result = st_canvas(
        fill_color=fill_color, stroke_width=stroke_width, stroke_color=color,
        background_color="#ffffff", background_image=background, background_image_fit="stretch",
        update_streamlit=True, height=height, width=width, drawing_mode=tool,
        initial_drawing=ss[f"{page}.initial"], return_image_data=True,
        key=f"{page}.canvas.{rev(page)}.{ss[f'{page}.mount']}",
    )
    drawing = result.json_data if result.json_data is not None else ss[f"{page}.initial"]
    ss[f"{page}.drawing"] = drawing
    signature = _signature(drawing)
    strokes = result.image_data
    if strokes is not None:
        strokes = np.asarray(strokes)
        ss[f"{page}.raster"] = (signature, png_bytes(Image.fromarray(strokes.astype(np.uint8))))
        image = compose(strokes, width, height, background)
    else:
        saved = ss.get(f"{page}.raster")
        if saved and saved[0] == signature:
            image = compose(np.asarray(image_from_bytes(saved[1]).convert("RGBA")), width, height, background)
        else:
            image = render_drawing(drawing, width, height, background)
    return image, drawing


def opaque(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited over white (the background)."""
    if has_alpha(image):
        return Image.fromarray(flatten(np.asarray(image.convert("RGBA"))))
    return image.convert("RGB")


UPLOAD_MAX_SIDE = 2048  # uploads are stretched to a canvas of at most ~1024 px: keep no more in the session


def read_upload(uploaded: Any, resample: int = Image.LANCZOS) -> Image.Image | None:
    """An uploaded image through core's checks (size from the header before decoding, every
    mode converted), shrunk to UPLOAD_MAX_SIDE; None, with the reason shown as an error, if
    it cannot be used. Region maps pass ``Image.NEAREST`` to keep their colours flat."""
    try:
        image = open_image(uploaded, "The uploaded image")
    except StudioError as exc:
        st.error(str(exc), icon=":material/error:")
        return None
    if max(image.size) > UPLOAD_MAX_SIDE:
        scale = UPLOAD_MAX_SIDE / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
    return image


def canvas_is_blank(page: str) -> bool:
    return object_count(ss.get(f"{page}.drawing")) == 0 and not ss.get(f"{page}.bg")


def upload_background(page: str, label: str = "Start from an image") -> None:
    """An uploader whose image becomes the canvas background (the drawing is kept)."""
    uploaded = st.file_uploader(label, type=["png", "jpg", "jpeg", "webp"],
                                key=f"{page}.upload.{ss.get(f'{page}.upload_rev', 0)}",
                                help="The image is stretched to the canvas; draw over it.")
    if uploaded is not None and ss.get(f"{page}.upload_id") != uploaded.file_id:
        ss[f"{page}.upload_id"] = uploaded.file_id
        image = read_upload(uploaded)
        if image is None:
            return
        reload_canvas(page, background=png_bytes(opaque(image)))
        st.rerun()


# --- colour -> prompt tables -------------------------------------------------------------------

def find_regions(page: str, image: Image.Image, *, ignore_white: bool) -> list[MapRegion]:
    """Painted colours of ``image`` (core.colors.read_region_map, as the CLI reads maps;
    cached per image), largest first."""
    key = hashlib.sha1(image.tobytes() + repr((image.mode, image.size)).encode()).hexdigest()
    cached = ss.get(f"{page}.regions_cache")
    if not cached or cached[0] != key:
        cached = (key, read_region_map(image))
        ss[f"{page}.regions_cache"] = cached
    return [r for r in cached[1] if not (ignore_white and r.hex == "#ffffff")]


def colour_table(page: str, regions: list[MapRegion], columns: dict[str, Any], *, height: int | None = None) -> dict[str, dict[str, Any]]:
    """An editable table, one row per region colour: swatch, name and area, then
    ``columns`` (name -> column config, default value in ``config['default']``).
    Rows are remembered per colour, so a colour keeps its prompt when others change.
    Returns {hex: {column: value}} for the colours shown, in order."""
    from .shared import rev

    store: dict[str, dict[str, Any]] = ss.setdefault(f"{page}.rows", {})
    hexes = [r.hex for r in regions]
    for h in hexes:
        store.setdefault(h, {name: spec.get("default") for name, spec in columns.items()})
    signature = hashlib.sha1(json.dumps([hexes, rev(page), ss.get(f"{page}.rows_rev", 0)]).encode()).hexdigest()[:12]
    base = ss.get(f"{page}.table_base")
    if base is None or base[0] != signature:
        frame = pd.DataFrame({
            "swatch": [swatch_data_url(r.color) for r in regions],
            "colour": [f"{readable_name(r.color)} · {100 * r.fraction:.0f}%" for r in regions],
            **{name: [store[h].get(name) for h in hexes] for name in columns},
        })
        for name, spec in columns.items():
            if spec.get("kind") == "int":
                frame[name] = pd.array(frame[name], dtype="Int64")
            else:
                frame[name] = frame[name].fillna("").astype(str)
        base = (signature, frame)
        ss[f"{page}.table_base"] = base
    config = {
        "swatch": st.column_config.ImageColumn("", width=32),
        "colour": st.column_config.TextColumn("Colour · area", disabled=True, width=88),
        **{name: spec["config"] for name, spec in columns.items()},
    }
    edited = st.data_editor(base[1], key=f"{page}.table.{signature}", hide_index=True, column_config=config,
                            num_rows="fixed", width="stretch", height=height or "auto")
    out: dict[str, dict[str, Any]] = {}
    for h, (_, row) in zip(hexes, edited.iterrows()):
        values = {}
        for name, spec in columns.items():
            value = row[name]
            if spec.get("kind") == "int":
                value = None if pd.isna(value) else int(value)
            else:
                value = "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
            values[name] = value
        store[h] = values
        out[h] = values
    return out


def set_rows(page: str, rows: dict[str, dict[str, Any]]) -> None:
    """Replace the remembered rows (restoring from the gallery); safe in callbacks."""
    ss[f"{page}.rows"] = {to_hex(h): dict(v) for h, v in rows.items()}
    ss[f"{page}.rows_rev"] = int(ss.get(f"{page}.rows_rev", 0)) + 1


# --- sizes ---------------------------------------------------------------------------------------

def round8(value: float) -> int:
    return max(8, int(round(value / 8)) * 8)


def aspect_sizes(native: int) -> dict[str, tuple[int, int]]:
    """Output sizes for the model's native side: square, landscape 3:2, portrait 2:3, wide 16:9."""
    return {"Square": (native, native), "Landscape 3:2": (round8(native * 1.5), native),
            "Portrait 2:3": (native, round8(native * 1.5)), "Wide 16:9": (round8(native * 16 / 9), native)}


REGION_COLUMNS = {
    "prompt": {"default": "", "config": st.column_config.TextColumn("Prompt", width=140,
                                                                   help="What this region shows")},
    "negative": {"default": "", "config": st.column_config.TextColumn("Negative", width=86,
                                                                     help="Kept out of this region only")},
    "seed": {"default": None, "kind": "int", "config": st.column_config.NumberColumn(
        "Seed", min_value=0, max_value=2**32 - 1, step=1, width=60, help="Blank: the sidebar seed")},
}


def region_prompt_table(page: str, regions: list[MapRegion]) -> list[dict[str, Any]]:
    """Swatch / prompt / negative prompt / seed per colour, with a warning for colours
    without a prompt. Returns [{color, prompt, negative, seed, region}] for every colour."""
    if not regions:
        st.caption("Paint or upload a map: each colour gets a row here. White is the background.")
        return []
    rows = colour_table(page, regions, REGION_COLUMNS)
    out = [{"color": r.hex, "region": r, **rows[r.hex]} for r in regions]
    unnamed = [f"{readable_name(r['color'])} ({r['color']})" for r in out if not r["prompt"].strip()]
    if unnamed:
        st.warning("No prompt for " + ", ".join(unnamed) + ": these areas will follow the background prompt. "
                   "Type a prompt in the table to give them their own.", icon=":material/warning:")
    return out


def region_map_upload(page: str) -> Image.Image | None:
    """An uploaded region map (kept in the session), or None."""
    uploaded = st.file_uploader("Region map", type=["png", "jpg", "jpeg", "webp"],
                                key=f"{page}.map_upload.{ss.get(f'{page}.upload_rev', 0)}",
                                help="An image of flat colours, one per region; white is the background.")
    if uploaded is not None and ss.get(f"{page}.map_id") != uploaded.file_id:
        image = read_upload(uploaded, Image.NEAREST)
        if image is None:
            return image_from_bytes(ss.get(f"{page}.map_png"))
        ss[f"{page}.map_id"] = uploaded.file_id
        ss[f"{page}.map_png"] = png_bytes(opaque(image))
    return image_from_bytes(ss.get(f"{page}.map_png"))


def cleaned_map(page: str, image: Image.Image) -> Image.Image:
    """The region map as the app reads it: flat colours (white = background), at the
    image's size, with anti-aliased edges and specks merged into painted colours."""
    regions = find_regions(page, image, ignore_white=False)
    return Image.fromarray(region_label_image(regions)) if regions else image.convert("RGB")


def region_settings(page: str, rows: list[dict[str, Any]], *, background_key: str, width: int, height: int,
                    window: int, **extra: Any) -> RegionSettings:
    """The Regions or Panorama page's settings from its widgets' state and its prompt table
    (and the model's recommended scheduler, if its folder names one)."""
    from .shared import recommended

    return RegionSettings(
        background_prompt=ss[f"{page}.{background_key}"], negative_prompt=ss[f"{page}.negative"],
        regions=[RegionSpec(r["color"], r["prompt"], r["negative"], r["seed"]) for r in rows],
        steps=int(ss[f"{page}.steps"]), guidance_scale=float(ss[f"{page}.guidance"]), seed=int(ss["seed"]),
        num_images=int(ss[f"{page}.variations"]), width=width, height=height, window=window,
        scheduler=recommended().scheduler, **extra)


# --- image prompts -------------------------------------------------------------------------------

IMAGE_PROMPT_SIDE = 512  # a reference is kept at most this large (CLIP sees it far smaller)


def _reference_png(uploaded: Any) -> bytes | None:
    image = read_upload(uploaded)
    if image is None:
        return None
    image = opaque(image)
    if max(image.size) > IMAGE_PROMPT_SIDE:
        image.thumbnail((IMAGE_PROMPT_SIDE, IMAGE_PROMPT_SIDE), Image.LANCZOS)
    return png_bytes(image)


def _gallery_pick(page: str, key: str) -> bytes | None:
    """A gallery picture chosen in a selectbox (None: none chosen)."""
    from .shared import get_gallery

    items = get_gallery().items()[:30]
    if not items:
        return None
    names = {"": "—"} | {item.id: f"{item.title[:40]} ({item.page})" for item in items}
    choice = st.selectbox("Or a picture from the gallery", list(names), format_func=names.get,
                          key=f"{page}.{key}.gallery")
    item = next((i for i in items if i.id == choice), None)
    return None if item is None else _reference_png(item.image_bytes())


def image_prompt_controls(page: str, region_colours: list[str] | None = None) -> ImagePromptSettings | None:
    """The page's "Image prompt" expander: a reference for the whole picture (upload or gallery),
    its weight and the guidance strength; with ``region_colours`` also one reference per colour."""
    ss.setdefault(f"{page}.ip_png", None)
    ss.setdefault(f"{page}.ip_regions", {})
    from .shared import keep_valid, recommended

    rec = recommended()
    adapter = rec.ip_adapter or DEFAULT_IP_ADAPTER
    methods = {"IP-Adapter": "ip-adapter", "CLIP guidance": "clip"}
    default = "IP-Adapter" if rec.image_method == "ip-adapter" else "CLIP guidance"
    scale = float(rec.ip_adapter_scale or 1.0) if rec.image_method == "ip-adapter" else 1.0
    keep_valid(page, {"ip_method": (default, list(methods)), "ip_weight": (1.0, (0.0, 3.0)),
                      "ip_scale": (scale, (0.0, 5.0))})  # a reopened gallery item brings these back
    for key, value in (("ip_method", default), ("ip_weight", 1.0), ("ip_scale", scale)):
        ss.setdefault(f"{page}.{key}", value)
    with st.expander("Image prompt", icon=":material/image:"):
        st.caption("A reference picture whose look the result takes on: IP-Adapter (its image as extra "
                   "cross-attention tokens; needs an adapter made for the model) or CLIP guidance (MGAD: text and "
                   "image prompts together through CLIP; any model, carries colours and light).")
        st.radio("How the reference acts", list(methods), key=f"{page}.ip_method", horizontal=True,
                 help=f"IP-Adapter uses {adapter} (the model's recommendation, else the bundled one made for the "
                      "demo model); CLIP guidance the bundled studio-clip.")
        uploaded = st.file_uploader("Reference picture", type=["png", "jpg", "jpeg", "webp"],
                                    key=f"{page}.ip_upload.{ss.get(f'{page}.ip_rev', 0)}")
        if uploaded is not None and ss.get(f"{page}.ip_id") != uploaded.file_id:
            ss[f"{page}.ip_id"] = uploaded.file_id
            ss[f"{page}.ip_png"] = _reference_png(uploaded) or ss[f"{page}.ip_png"]
        picked = _gallery_pick(page, "ip")
        if picked is not None:
            ss[f"{page}.ip_png"] = picked
        if ss[f"{page}.ip_png"] is not None:
            a, b = st.columns([1, 2], vertical_alignment="center")
            a.image(ss[f"{page}.ip_png"], width=96)
            if b.button("Remove", key=f"{page}.ip_remove", icon=":material/close:"):
                ss[f"{page}.ip_png"] = None
                ss[f"{page}.ip_rev"] = ss.get(f"{page}.ip_rev", 0) + 1
                st.rerun()
        st.slider("Weight of the reference", 0.0, 3.0, step=0.1, key=f"{page}.ip_weight",
                  help="Relative to the regions' references. 0 turns it off.")
        st.slider("Image prompt strength", 0.0, 5.0, step=0.05, key=f"{page}.ip_scale",
                  help="How strongly the reference acts (0: off): the IP-Adapter's scale (0.5-1 is usual) or the "
                       "CLIP guidance's.")
        regions: dict[str, bytes] = ss[f"{page}.ip_regions"]
        if region_colours:
            st.markdown("**Per region**")
            names = {c: f"{readable_name(c)} ({c})" for c in region_colours}
            colour = st.selectbox("Region", region_colours, format_func=names.get, key=f"{page}.ip_colour")
            region_upload = st.file_uploader(f"Reference for {names[colour]}", type=["png", "jpg", "jpeg", "webp"],
                                             key=f"{page}.ip_region_upload.{colour}.{ss.get(f'{page}.ip_rev', 0)}")
            if region_upload is not None and ss.get(f"{page}.ip_region_id.{colour}") != region_upload.file_id:
                ss[f"{page}.ip_region_id.{colour}"] = region_upload.file_id
                png = _reference_png(region_upload)
                if png is not None:
                    regions[colour] = png
            for hex_, png in list(regions.items()):
                if hex_ not in region_colours:
                    continue
                a, b = st.columns([1, 2], vertical_alignment="center")
                a.image(png, width=64, caption=readable_name(hex_))
                if b.button("Remove", key=f"{page}.ip_region_remove.{hex_}", icon=":material/close:"):
                    del regions[hex_]
                    st.rerun()
    region_refs = tuple((c, regions[c], 1.0) for c in (region_colours or []) if c in regions)
    if ss[f"{page}.ip_png"] is None and not region_refs:
        return None
    return ImagePromptSettings(image_png=ss[f"{page}.ip_png"], weight=float(ss[f"{page}.ip_weight"]),
                               scale=float(ss[f"{page}.ip_scale"]), regions=region_refs,
                               method=methods[ss[f"{page}.ip_method"]], ip_adapter=adapter)
