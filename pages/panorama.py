"""Panorama: one prompt, any aspect ratio (MultiDiffusion), optionally 360 degrees and
optionally laid out by a region map."""
import streamlit as st

from core.errors import StudioError
from studio_ui import shared, widgets
from studio_ui.canvas import b64
from studio_ui.methods import panorama_request
from studio_ui.site import PAGE_SETTINGS
from studio_ui.restore import ui_state

PAGE = "panorama"
ss = st.session_state
SETTINGS = PAGE_SETTINGS[PAGE]
PRESETS = {"2:1": (2, False), "4:1": (4, False), "360": (4, True), "custom": (None, False)}
PRESET_LABELS = {"2:1": "2:1", "4:1": "4:1", "360": "360° circular", "custom": "Custom"}

shared.enter_page(PAGE)
shared.collect(PAGE)
engine = shared.current_engine()
native = engine.bundle.native_size if engine is not None else 512
shared.follow_model_defaults(PAGE, {"steps": ("steps", 50), "guidance": ("guidance_scale", 7.5)})
shared.init_state({
    f"{PAGE}.prompt": "", f"{PAGE}.negative": "blurry, low quality, watermark", f"{PAGE}.preset": "2:1",
    f"{PAGE}.width": 4 * native, f"{PAGE}.height": native, f"{PAGE}.use_map": False, f"{PAGE}.variations": 1,
    f"{PAGE}.shifted": False,
})
shared.keep_valid(PAGE, {
    "prompt": ("", None), "negative": ("", None), "preset": ("2:1", PRESETS), "width": (4 * native, (64, 8192)),
    "height": (native, (64, 2048)), "use_map": (False, None), "variations": (1, (1, 4)), "steps": (50, (1, 100)),
    "guidance": (7.5, (1.0, 15.0)), "shifted": (False, None)})

st.title("Panorama", anchor=False)
st.caption("Wide pictures of any aspect ratio from one prompt, seamless from end to end (MultiDiffusion). "
           "The 360° preset wraps around, for panorama viewers.")
engine = shared.require_engine()

top_left, top_right = st.columns([3, 2])
top_left.text_area("Prompt", key=f"{PAGE}.prompt", height=80, persist_state="session",
                   placeholder="a photo of the dolomites at sunrise, wide angle")
top_right.text_area("Negative prompt", key=f"{PAGE}.negative", height=80, persist_state="session")

left, right = st.columns([5, 6], gap="large")
with left:
    st.segmented_control("Shape", list(PRESETS), format_func=PRESET_LABELS.get, key=f"{PAGE}.preset",
                         required=True, persist_state="session")
    ratio, circular = PRESETS[ss[f"{PAGE}.preset"]]
    if ratio is None:
        a, b = st.columns(2)
        a.number_input("Width", 8 * 8, 8192, step=8 * 8, key=f"{PAGE}.width", persist_state="session")
        b.number_input("Height", 8 * 8, 2048, step=8 * 8, key=f"{PAGE}.height", persist_state="session")
        width, height = widgets.round8(ss[f"{PAGE}.width"]), widgets.round8(ss[f"{PAGE}.height"])
    else:
        width, height = ratio * native, native
    st.caption(f"Output: {width}×{height} px" + (" · wraps around" if circular else ""))
    st.toggle("Lay it out with a region map", key=f"{PAGE}.use_map", persist_state="session",
              help="Upload a map of flat colours (stretched to the panorama) and give each colour a prompt.")
    rows, region_map = [], None
    if ss[f"{PAGE}.use_map"]:
        region_map = widgets.region_map_upload(PAGE)
        if region_map is not None:
            with st.container(border=True):
                st.image(region_map, caption="Uploaded region map", width="stretch")
            rows = widgets.region_prompt_table(PAGE, widgets.find_regions(PAGE, region_map, ignore_white=True))
    a, b = st.columns(2)
    a.number_input("Variations", 1, 4, key=f"{PAGE}.variations", persist_state="session")
    with st.expander("Steps and guidance"):
        st.slider("Steps", 1, 100, key=f"{PAGE}.steps", persist_state="session")
        st.slider("Guidance (CFG)", 1.0, 15.0, step=0.5, key=f"{PAGE}.guidance", persist_state="session")
        st.toggle("Fast windows (SpotDiffusion)", key=f"{PAGE}.shifted", persist_state="session",
                  help="Non-overlapping windows that move at every step instead of MultiDiffusion's overlapping "
                       "ones: several times faster on wide panoramas, with slightly weaker blending between "
                       "windows (see the README's panorama figures).")
    image_prompt = widgets.image_prompt_controls(PAGE)

    busy = shared.active_job(PAGE) is not None
    if shared.generate_button(PAGE, engine):
        settings = widgets.region_settings(PAGE, rows, background_key="prompt", width=width, height=height,
                                           window=shared.native_latent(engine), circular=circular,
                                           shifted=bool(ss[f"{PAGE}.shifted"]), image_prompt=image_prompt)
        try:
            request = panorama_request(settings, widgets.cleaned_map(PAGE, region_map) if region_map else None)
        except StudioError as exc:
            ss[f"{PAGE}.message"] = ("error", str(exc))
        else:
            ui = ui_state(PAGE, SETTINGS, images={"map_png": b64(ss.get(f"{PAGE}.map_png"))})
            shared.submit(PAGE, engine, request, title=settings.background_prompt or "panorama", ui=ui)
        st.rerun()

with right:
    shared.progress_panel(PAGE)
    shared.show_message(PAGE)
    if shared.result_items(PAGE):
        st.subheader("Results", anchor=False)
        shared.show_results(PAGE, columns=1)
    elif not busy and not ss.get(f"{PAGE}.message"):
        st.info("Type a prompt, pick a shape and press **Generate**.", icon=":material/lightbulb:")
