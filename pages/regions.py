"""Region Painter: paint coloured regions (or upload a region map), give each colour its
own prompt, and generate them together with MultiDiffusion region fusion; a width
multiplier turns the result into a panorama."""
import streamlit as st

from core.errors import StudioError
from studio_ui import shared, widgets
from studio_ui.canvas import b64, canvas_size, png_bytes
from core.colors import region_label_image
from studio_ui.methods import LIVE_STEPS, live_region_settings, region_request
from studio_ui.site import PAGE_SETTINGS
from studio_ui.restore import canvas_state, ui_state

PAGE = "regions"
ss = st.session_state
SETTINGS = PAGE_SETTINGS[PAGE]
SOURCES = {"paint": ":material/brush: Paint", "upload": ":material/upload: Upload a map"}
MODES = {"fusion": "Exact (MultiDiffusion)", "attention": "One pass (regional attention)"}

shared.enter_page(PAGE)
shared.collect(PAGE)
shared.follow_model_defaults(PAGE, {"steps": ("steps", 50), "guidance": ("guidance_scale", 7.5)})
shared.init_state({
    f"{PAGE}.background": "", f"{PAGE}.negative": "blurry, low quality, watermark", f"{PAGE}.source": "paint",
    f"{PAGE}.variations": 1, f"{PAGE}.size": "Landscape 3:2",
    f"{PAGE}.multiplier": 1, f"{PAGE}.circular": False, f"{PAGE}.keep_colours": False, f"{PAGE}.fidelity": 0.5,
    f"{PAGE}.mode": "fusion", f"{PAGE}.shifted": False, f"{PAGE}.live": False, f"{PAGE}.live_steps": LIVE_STEPS,
})

st.title("Region Painter", anchor=False)
st.caption("Paint areas in different colours and give each colour its own prompt: each region gets exactly "
           "what you asked for, blended seamlessly (MultiDiffusion). White is the background.")
engine = shared.require_engine()
native = engine.bundle.native_size if engine is not None else 512
sizes = widgets.aspect_sizes(native)
shared.keep_valid(PAGE, {
    "background": ("", None), "negative": ("", None), "source": ("paint", SOURCES), "variations": (1, (1, 8)),
    "size": ("Square", sizes), "multiplier": (1, (1, 4)), "circular": (False, None), "keep_colours": (False, None),
    "fidelity": (0.5, (0.0, 1.0)), "steps": (50, (1, 100)), "guidance": (7.5, (1.0, 15.0)), "mode": ("fusion", MODES),
    "shifted": (False, None), "live": (False, None), "live_steps": (LIVE_STEPS, (4, 20)), **widgets.BRUSH_RULES})

top_left, top_right = st.columns([3, 2])
top_left.text_area("Background prompt", key=f"{PAGE}.background", height=80, persist_state="session",
                   placeholder="a sunny meadow, soft light, highly detailed",
                   help="Used everywhere no region prompt applies, and to tie the picture together.")
top_right.text_area("Negative prompt", key=f"{PAGE}.negative", height=80, persist_state="session",
                    help="Kept out of every region (a region's own negative prompt is added to it).")

left, right = st.columns([6, 5], gap="large")
with left:
    st.segmented_control("Regions from", list(SOURCES), format_func=SOURCES.get, key=f"{PAGE}.source",
                         required=True, persist_state="session", label_visibility="collapsed")
    if ss[f"{PAGE}.source"] == "paint":
        tool, brush, color, fill = widgets.brush_controls(PAGE, default_tool="freedraw", default_size=40,
                                                          default_swatch="red")
        canvas_slot = st.container()
        c1, c2 = st.columns([1, 3], vertical_alignment="bottom")
        c1.button("Clear", icon=":material/delete:", on_click=widgets.clear_canvas, args=(PAGE,))
        c2.selectbox("Size", list(sizes), key=f"{PAGE}.size", persist_state="session",
                     format_func=lambda name: f"{name} · {sizes[name][0]}×{sizes[name][1]}")
        width, height = sizes.get(ss[f"{PAGE}.size"], sizes["Square"])
        with canvas_slot:
            cw, ch = canvas_size(width, height)
            region_map, drawing = widgets.drawing_canvas(PAGE, width=cw, height=ch, tool=tool, stroke_width=brush,
                                                         color=color, fill=fill)
    else:
        drawing, cw, ch = None, None, None
        region_map = widgets.region_map_upload(PAGE)
        if region_map is not None:
            with st.container(border=True):
                st.image(region_map, caption="Uploaded region map", width="stretch")
            width, height = widgets.round8(native * region_map.width / max(region_map.height, 1)), native
            if max(width, height) > 2 * native:  # keep uploads of odd shapes to a sensible size
                scale = 2 * native / max(width, height)
                width, height = widgets.round8(width * scale), widgets.round8(height * scale)
        else:
            width, height = sizes["Square"]
    regions = widgets.find_regions(PAGE, region_map, ignore_white=True) if region_map is not None else []
    if regions:
        with st.expander("How the app reads your map"):
            all_regions = widgets.find_regions(PAGE, region_map, ignore_white=False)
            st.image(region_label_image(all_regions), width="stretch",
                     caption="Each pixel goes to its nearest painted colour; soft edges and specks are merged.")
    with st.container(border=True):
        a, b = st.columns(2)
        a.slider("Panorama width", 1, 4, key=f"{PAGE}.multiplier", persist_state="session", format="×%d",
                 help="×1: a normal picture. ×2 or more: the same regions stretched into a wide panorama.")
        b.number_input("Variations", 1, 8, key=f"{PAGE}.variations", persist_state="session")
        if ss[f"{PAGE}.multiplier"] > 1:
            st.toggle("360° (wraps around)", key=f"{PAGE}.circular", persist_state="session",
                      help="The left and right edges join, for a 360-degree viewer.")
        st.toggle("Keep my colours", key=f"{PAGE}.keep_colours", persist_state="session",
                  help="Also keep the painted colours in the picture (GradOP+ stroke guidance); white stays free.")
        if ss[f"{PAGE}.keep_colours"]:
            st.slider("Fidelity to the colours", 0.0, 1.0, step=0.05, key=f"{PAGE}.fidelity", persist_state="session")
        with st.expander("Steps and guidance"):
            st.slider("Steps", 1, 100, key=f"{PAGE}.steps", persist_state="session")
            st.slider("Guidance (CFG)", 1.0, 15.0, step=0.5, key=f"{PAGE}.guidance", persist_state="session")
            st.segmented_control(
                "How regions are made", list(MODES), format_func=MODES.get, key=f"{PAGE}.mode", required=True,
                persist_state="session",
                help="Exact: each prompt gets its own pass of the model and the results are blended "
                     "(MultiDiffusion; time grows with the number of regions). One pass: every prompt goes "
                     "through the same pass and each region's pixels attend only to their own prompt (about "
                     "the time of a plain picture, whatever the number of regions). The README compares how "
                     "well each keeps the region colours.")
            if ss[f"{PAGE}.multiplier"] > 1:
                st.toggle("Fast windows (SpotDiffusion)", key=f"{PAGE}.shifted", persist_state="session",
                          help="Panoramas: non-overlapping windows that move at every step instead of "
                               "overlapping ones; several times faster on wide canvases.")
            if ss[f"{PAGE}.live"]:
                st.slider("Live preview steps", 4, 20, key=f"{PAGE}.live_steps", persist_state="session",
                          help="Fewer: quicker previews while you paint. Render full quality uses Steps.")

with right:
    st.subheader("Regions", anchor=False)
    rows = widgets.region_prompt_table(PAGE, regions)
    out_w, out_h = width * int(ss[f"{PAGE}.multiplier"]), height
    st.caption(f"Output: {out_w}×{out_h} px")
    image_prompt = widgets.image_prompt_controls(PAGE, [r["color"] for r in rows])

    settings = widgets.region_settings(
        PAGE, rows, background_key="background", width=width, height=height,
        window=shared.native_latent(engine) if engine is not None else 64,
        width_multiplier=int(ss[f"{PAGE}.multiplier"]),
        circular=bool(ss[f"{PAGE}.circular"]) and ss[f"{PAGE}.multiplier"] > 1,
        keep_colours=bool(ss[f"{PAGE}.keep_colours"]), fidelity=float(ss[f"{PAGE}.fidelity"]),
        attention=ss[f"{PAGE}.mode"] == "attention",
        shifted=bool(ss[f"{PAGE}.shifted"]) and ss[f"{PAGE}.multiplier"] > 1, image_prompt=image_prompt)

    def request_for(chosen):
        if region_map is None:
            raise StudioError("Paint some regions or upload a region map first.")
        return region_request(chosen, widgets.cleaned_map(PAGE, region_map))

    if shared.live_toggle(PAGE):
        live = live_region_settings(settings, int(ss[f"{PAGE}.live_steps"]))
        shared.live_preview(PAGE, engine, lambda: request_for(live),
                            shared.live_signature(None if region_map is None else png_bytes(region_map), live))

    busy = shared.active_job(PAGE) is not None
    if shared.generate_button(PAGE, engine):
        try:
            request = request_for(settings)
        except StudioError as exc:
            ss[f"{PAGE}.message"] = ("error", str(exc))
        else:
            ui = ui_state(PAGE, SETTINGS,
                          canvas=None if drawing is None else canvas_state(PAGE, drawing, (cw, ch)),
                          images={"map_png": b64(ss.get(f"{PAGE}.map_png"))} if drawing is None else {},
                          region_map_png=b64(png_bytes(region_map)))
            title = settings.background_prompt or ", ".join(r.prompt for r in settings.regions if r.prompt)
            shared.submit(PAGE, engine, request, title=title or "regions", ui=ui)
        st.rerun()

    shared.progress_panel(PAGE)
    shared.show_message(PAGE)
    if shared.result_items(PAGE):
        st.subheader("Results", anchor=False)
        shared.show_results(PAGE, columns=1 if ss[f"{PAGE}.multiplier"] > 1 else 2)
    elif not busy and not ss.get(f"{PAGE}.message"):
        button = "Render full quality" if ss.get(f"{PAGE}.live") else "Generate"
        st.info(f"Paint regions, give each colour a prompt in the table and press **{button}**.",
                icon=":material/lightbulb:")
