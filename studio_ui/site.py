"""The app's one list of pages: app.py's navigation, page titles in the gallery and the
queue, and the pages a gallery item can be reopened in all come from :data:`PAGES`.
No streamlit."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PageInfo:
    key: str  # the page's state prefix and address (/scribble)
    file: str
    title: str
    icon: str
    editor: bool = True  # a gallery item made here reopens here
    settings: tuple[str, ...] = ()  # the page's saved settings (<key>.<setting>); only these are restored


PAGES = (
    PageInfo("scribble", "pages/scribble.py", "Scribble to Art", ":material/draw:", settings=(
        "prompt", "negative", "method", "fidelity", "variations", "steps", "guidance", "size", "multiplier",
        "shifted", "circular", "name_regions",
        "free_background", "tool", "brush", "swatch", "custom", "fill")),
    PageInfo("regions", "pages/regions.py", "Region Painter", ":material/format_paint:", settings=(
        "background", "negative", "source", "variations", "steps", "guidance", "size", "multiplier", "circular",
        "tool", "brush", "swatch", "custom", "fill", "keep_colours", "fidelity", "mode", "shifted")),
    PageInfo("panorama", "pages/panorama.py", "Panorama", ":material/panorama:", settings=(
        "prompt", "negative", "preset", "width", "height", "use_map", "variations", "steps", "guidance",
        "shifted")),
    PageInfo("gallery", "pages/gallery.py", "Gallery", ":material/photo_library:", editor=False),
)
PAGE_TITLES = {p.key: p.title for p in PAGES} | {"upscale": "Upscaled"}  # "upscale": results of Upscale
PAGE_FILES = {p.key: p.file for p in PAGES if p.editor}  # the editors
PAGE_SETTINGS = {p.key: p.settings for p in PAGES}
