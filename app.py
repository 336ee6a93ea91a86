"""Sketch-to-art studio: routes the pages and holds the shared sidebar (nothing else).

Run with ``streamlit run app.py``. Pages live in ``pages/``; what they share (the cached
engine, the job queue, the gallery) lives in ``studio_ui/``; the engine is ``core/``.
"""
import streamlit as st

from studio_ui import shared
from studio_ui.site import PAGES

st.set_page_config(page_title="Sketch-to-Art Studio", page_icon=":material/palette:", layout="wide")

page = st.navigation([st.Page(p.file, title=p.title, icon=p.icon, url_path=p.key, default=i == 0)
                      for i, p in enumerate(PAGES)])
shared.sidebar()
with shared.routed():  # tells the page that the sidebar is drawn (see shared.ensure_router)
    page.run()
