"""Gallery: every result with its recipe. Browse, download, delete, or open it again in
the editor with the drawing, regions, prompts and settings exactly as they were."""
import json

import streamlit as st

from studio_ui import shared
from studio_ui.gallery import shown_path
from studio_ui.restore import restore, saved_image
from studio_ui.site import PAGE_FILES, PAGE_TITLES

PAGE = "gallery"
ss = st.session_state
PER_PAGE = 12
KINDS = {"scribble": "Scribbles", "regions": "Regions", "panorama": "Panoramas", "upscale": "Upscaled"}

shared.enter_page(PAGE)
shared.collect(PAGE)
shared.init_state({f"{PAGE}.filter": [], f"{PAGE}.search": "", f"{PAGE}.shown": PER_PAGE})
if ss.get(f"{PAGE}.results"):  # an upscale finished: show the new image
    ss[f"{PAGE}.selected"] = ss.pop(f"{PAGE}.results")[0]
gallery = shared.get_gallery()
items = gallery.items()

st.title("Gallery", anchor=False)
st.caption(f"Every result is saved in `{shown_path(gallery.root)}` as a PNG with its full recipe, plus a JSON file "
           "that remembers the editor. Open one to continue where you left off.")

if not items:
    st.info("Nothing here yet. Make something on **Scribble to Art**, **Region Painter** or **Panorama**.",
            icon=":material/photo_library:")
    st.stop()


def select(item_id: str | None) -> None:
    ss[f"{PAGE}.selected"] = item_id


def delete(item_id: str) -> None:
    gallery.delete(item_id)
    ss[f"{PAGE}.selected"] = None
    ss[f"{PAGE}.toast"] = "Deleted."


selected = gallery.get(ss.get(f"{PAGE}.selected") or "")
if ss.get(f"{PAGE}.toast"):
    st.toast(ss.pop(f"{PAGE}.toast"))

if selected is not None:
    with st.container(border=True):
        image_col, info_col = st.columns([3, 2], gap="large")
        image_col.image(str(selected.image_path), width="stretch")
        with info_col:
            st.subheader(selected.title, anchor=False)
            meta = selected.meta
            st.caption(f"{PAGE_TITLES.get(selected.page, selected.page)} · {meta.get('created', '')} · "
                       f"{meta.get('size', ['?', '?'])[0]}×{meta.get('size', ['?', '?'])[1]} · seed {meta.get('seed')} · "
                       f"model {meta.get('model', {}).get('name', '?')}")
            upscale = selected.ui.get("upscale") if isinstance(selected.ui.get("upscale"), dict) else None
            if upscale and gallery.get(str(upscale.get("source", ""))) is not None:
                st.button(f"Made from {upscale.get('source')}", icon=":material/arrow_back:", type="tertiary",
                          on_click=select, args=(str(upscale["source"]),), key=f"{PAGE}.source")
            shared.progress_panel(PAGE)
            shared.show_message(PAGE)
            shared.upscale_button(PAGE, selected, shared.current_engine())
            editor = selected.ui.get("page") or selected.page  # an upscaled image reopens its source's editor
            if editor in PAGE_FILES and st.button("Open in editor", type="primary", icon=":material/edit:",
                                                  key=f"{PAGE}.open", width="stretch"):
                target = restore(selected)
                if target:
                    st.switch_page(target)
            a, b = st.columns(2)
            a.download_button("PNG + recipe", selected.image_bytes(), file_name=selected.image_path.name,
                              mime="image/png", icon=":material/download:", on_click="ignore", width="stretch",
                              key=f"{PAGE}.dl_png")
            b.download_button("Recipe JSON", selected.sidecar_bytes(), file_name=selected.meta_path.name,
                              mime="application/json", icon=":material/data_object:", on_click="ignore",
                              width="stretch", key=f"{PAGE}.dl_json")
            canvas, images = selected.ui.get("canvas"), selected.ui.get("images")
            source = (saved_image(canvas.get("scribble_png") if isinstance(canvas, dict) else None)
                      or saved_image(selected.ui.get("region_map_png"))
                      or saved_image(images.get("map_png") if isinstance(images, dict) else None))
            if source:
                with st.container(border=True, width="content"):
                    st.image(source, caption="What it was made from", width=160)
            with st.expander("Parameters"):
                st.code(selected.parameters or json.dumps(selected.recipe.get("request", {}), indent=1)[:2000],
                        language=None, wrap_lines=True)
            c, d = st.columns(2)
            c.button("Close", icon=":material/close:", on_click=select, args=(None,), width="stretch",
                     key=f"{PAGE}.close")
            with d.popover("Delete", icon=":material/delete:", width="stretch"):
                st.write("Delete this image and its recipe for good?")
                st.button("Yes, delete", type="primary", on_click=delete, args=(selected.id,), key=f"{PAGE}.delete")

f1, f2 = st.columns([2, 3], vertical_alignment="bottom")
f1.pills("Show", list(KINDS), format_func=KINDS.get, selection_mode="multi", key=f"{PAGE}.filter",
         persist_state="session", label_visibility="collapsed")
f2.text_input("Search prompts", key=f"{PAGE}.search", placeholder="Search prompts…", persist_state="session",
              label_visibility="collapsed")
kinds, words = ss.get(f"{PAGE}.filter") or [], ss.get(f"{PAGE}.search", "").strip().lower()
shown = [it for it in items if (not kinds or it.page in kinds) and (not words or words in it.title.lower())]
st.caption(f"{len(shown)} of {len(items)} images")

columns = st.columns(4)
for i, item in enumerate(shown[: ss[f"{PAGE}.shown"]]):
    with columns[i % 4].container(border=True):
        st.image(str(item.image_path), width="stretch")
        st.caption(f"{item.title[:60]}  \n{PAGE_TITLES.get(item.page, item.page)} · seed {item.meta.get('seed')}")
        st.button("View", key=f"{PAGE}.view.{item.id}", on_click=select, args=(item.id,), width="stretch",
                  type="tertiary", icon=":material/open_in_full:")
if len(shown) > ss[f"{PAGE}.shown"]:
    st.button("Show more", on_click=lambda: ss.update({f"{PAGE}.shown": ss[f"{PAGE}.shown"] + PER_PAGE}))
