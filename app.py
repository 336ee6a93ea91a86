"""Sketch-to-art studio: routes the pages and holds the shared sidebar (nothing else).

Run with ``streamlit run app.py``. Pages live in ``pages/``; what they share (the cached
engine, the job queue, the gallery) lives in ``studio_ui/``; the engine is ``core/``.
"""
import streamlit as st

from studio_ui import shared

st.set_page_config(page_title="Sketch-to-Art Studio", page_icon=":material/palette:", layout="wide")

page = st.navigation([
    st.Page("pages/scribble.py", title="Scribble to Art", icon=":material/draw:", url_path="scribble", default=True),
    st.Page("pages/regions.py", title="Region Painter", icon=":material/format_paint:", url_path="regions"),
    st.Page("pages/panorama.py", title="Panorama", icon=":material/panorama:", url_path="panorama"),
    st.Page("pages/gallery.py", title="Gallery", icon=":material/photo_library:", url_path="gallery"),
])
shared.sidebar()
with shared.routed():  # tells the page that the sidebar is drawn (see shared.ensure_router)
    page.run()
