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


PAGES = (
    PageInfo("scribble", "pages/scribble.py", "Scribble to Art", ":material/draw:"),
    PageInfo("regions", "pages/regions.py", "Region Painter", ":material/format_paint:"),
    PageInfo("panorama", "pages/panorama.py", "Panorama", ":material/panorama:"),
    PageInfo("gallery", "pages/gallery.py", "Gallery", ":material/photo_library:", editor=False),
)
PAGE_TITLES = {p.key: p.title for p in PAGES}
PAGE_FILES = {p.key: p.file for p in PAGES if p.editor}  # the editors
