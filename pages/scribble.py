"""Scribble to Art: draw coloured strokes, describe the picture, get artwork that keeps
your colours and layout (GradOP+ stroke guidance, or SDEdit)."""
import streamlit as st

from core.errors import StudioError
from studio_ui import shared, widgets
from studio_ui.canvas import b64, canvas_size, png_bytes
from studio_ui.methods import (LIVE_STEPS, METHOD_HELP, SCRIBBLE_METHODS, ScribbleSettings, live_scribble_settings,
                               missing_region_words, scribble_request)
from studio_ui.site import PAGE_SETTINGS
from studio_ui.restore import canvas_state, ui_state

PAGE = "scribble"
ss = st.session_state
SETTINGS = PAGE_SETTINGS[PAGE]

shared.enter_page(PAGE)
shared.collect(PAGE)
methods = list(SCRIBBLE_METHODS)
shared.follow_model_defaults(PAGE, {"steps": ("steps", 50), "guidance": ("guidance_scale", 7.5),
                                   "fidelity": ("fidelity", 0.5)})
shared.init_state({
    f"{PAGE}.prompt": "", f"{PAGE}.negative": "blurry, low quality, watermark", f"{PAGE}.method": methods[0],
    f"{PAGE}.variations": 1,
    f"{PAGE}.size": "Square", f"{PAGE}.multiplier": 1, f"{PAGE}.shifted": False, f"{PAGE}.circular": False,
    f"{PAGE}.name_regions": False,
    f"{PAGE}.free_background": True,
    f"{PAGE}.live": False, f"{PAGE}.live_steps": LIVE_STEPS,
})
shared.keep_valid(PAGE, {
    "prompt": ("", None), "negative": ("", None), "method": (methods[0], methods), "variations": (1, (1, 8)),
    "size": ("Square", widgets.aspect_sizes(8)), "multiplier": (1, (1, 4)), "shifted": (False, None),
    "circular": (False, None), "name_regions": (False, None),
    "free_background": (True, None),
    "fidelity": (0.5, (0.0, 1.0)), "steps": (50, (1, 100)), "guidance": (7.5, (1.0, 15.0)), "live": (False, None),
    "live_steps": (LIVE_STEPS, (4, 20)), **widgets.BRUSH_RULES})

st.title("Scribble to Art", anchor=False)
st.caption("Draw rough coloured shapes, say what they are, and get a picture that keeps your colours and layout.")
engine = shared.require_engine()
native = engine.bundle.native_size if engine is not None else 512
sizes = widgets.aspect_sizes(native)

top_left, top_right = st.columns([3, 2])
top_left.text_area("Prompt", key=f"{PAGE}.prompt", height=80, persist_state="session",
                   placeholder="a watercolor of a lake at night with a white moon")
top_right.text_area("Negative prompt", key=f"{PAGE}.negative", height=80, persist_state="session",
                    help="What to keep out of the picture.")

left, right = st.columns([6, 5], gap="large")
with left:
    tool, brush, color, fill = widgets.brush_controls(PAGE)
    canvas_slot = st.container()
    below = st.container()
with below:
    c1, c2, c3 = st.columns([1, 2, 2], vertical_alignment="bottom")
    c1.button("Clear", icon=":material/delete:", on_click=widgets.clear_canvas, args=(PAGE,),
              help="Remove all strokes and the background image. Undo / redo: hover over the canvas.")
    c2.selectbox("Size", list(sizes), key=f"{PAGE}.size", persist_state="session",
                 format_func=lambda name: f"{name} · {sizes[name][0]}×{sizes[name][1]}")
    c3.slider("Panorama width", 1, 4, key=f"{PAGE}.multiplier", persist_state="session", format="×%d",
              help="×1: a normal picture. ×2 or more: your scribble stretched into a wide panorama, made in "
                   "windows of the model's size (MultiDiffusion) so nothing repeats or warps.")
    widgets.upload_background(PAGE)
width, height = sizes.get(ss[f"{PAGE}.size"], sizes["Square"])
with canvas_slot:
    cw, ch = canvas_size(width, height)
    scribble, drawing = widgets.drawing_canvas(PAGE, width=cw, height=ch, tool=tool, stroke_width=brush,
                                               color=color, fill=fill)
    multiplier = int(ss[f"{PAGE}.multiplier"])
    st.caption("Hover over the canvas for undo, redo, edit and reset."
               + (f" Output: {width * multiplier}×{height} px, the drawing stretched ×{multiplier}."
                  if multiplier > 1 else ""))

with left:
    st.toggle("Name the regions", key=f"{PAGE}.name_regions", persist_state="session",
              help="Tell the model what each colour is: words of your prompt (semantic control), or a prompt of "
                   "its own (region prompts by MultiDiffusion; the main prompt is then the background's).")
    region_words: dict[str, str] = {}
    region_prompts: dict[str, str] = {}
    if ss[f"{PAGE}.name_regions"]:
        regions = widgets.find_regions(PAGE, scribble, ignore_white=True)
        if not regions:
            st.caption("Draw something first: each colour on the canvas gets a row here.")
        else:
            rows = widgets.colour_table(PAGE, regions, {
                "words": {"default": "", "config": st.column_config.TextColumn("Words from the prompt", width="medium")},
                "prompt": {"default": "", "config": st.column_config.TextColumn("Or its own prompt", width="medium")}})
            region_words = {h: r["words"].strip() for h, r in rows.items() if (r.get("words") or "").strip()}
            region_prompts = {h: r["prompt"].strip() for h, r in rows.items() if (r.get("prompt") or "").strip()}
            if region_words and region_prompts:
                st.warning("Use either words of the prompt or own prompts for the colours, not both: clear one "
                           "column.", icon=":material/warning:")
            tokenizer = engine.bundle.tokenizer if engine is not None else None
            missing = missing_region_words(tokenizer, ss[f"{PAGE}.prompt"], list(region_words.values()))
            if missing:
                st.warning("Not in the prompt: " + ", ".join(f"'{w}'" for w in missing)
                           + ". Region words must be words of your prompt.", icon=":material/warning:")

with right:
    m1, m2 = st.columns(2)
    m1.selectbox("Method", methods, key=f"{PAGE}.method", persist_state="session",
                 help="\n\n".join(f"**{m}**: {METHOD_HELP[m]}" for m in methods))
    m2.number_input("Variations", 1, 8, key=f"{PAGE}.variations", persist_state="session",
                    help="Several images at once; image i uses seed + i.")
    st.slider("Fidelity to the scribble", 0.0, 1.0, step=0.05, key=f"{PAGE}.fidelity", persist_state="session",
              help="Low: the prompt leads and the scribble is a loose hint. High: colours and shapes are kept.")
    with st.expander("More settings"):
        st.toggle("Leave unpainted areas to the model", key=f"{PAGE}.free_background", persist_state="session",
                  help="On: only painted pixels guide the picture. Off: white canvas stays light.")
        st.slider("Steps", 1, 100, key=f"{PAGE}.steps", persist_state="session")
        st.slider("Guidance (CFG)", 1.0, 15.0, step=0.5, key=f"{PAGE}.guidance", persist_state="session",
                  help="How strongly the prompt is followed.")
        if multiplier > 1:
            st.toggle("Fast windows (SpotDiffusion)", key=f"{PAGE}.shifted", persist_state="session",
                      help="Panoramas: non-overlapping windows that move at every step instead of overlapping "
                           "ones; several times faster on wide canvases.")
            st.toggle("360° (wraps around)", key=f"{PAGE}.circular", persist_state="session",
                      help="The left and right edges join, for a 360-degree viewer: draw across the edge and "
                           "the two ends continue each other.")
        if ss[f"{PAGE}.live"]:
            st.slider("Live preview steps", 4, 20, key=f"{PAGE}.live_steps", persist_state="session",
                      help="Fewer: quicker previews while you draw. Render full quality uses Steps.")
    image_prompt = widgets.image_prompt_controls(PAGE)

    blank = widgets.canvas_is_blank(PAGE)
    settings = ScribbleSettings(
        prompt=ss[f"{PAGE}.prompt"], negative_prompt=ss[f"{PAGE}.negative"], steps=int(ss[f"{PAGE}.steps"]),
        guidance_scale=float(ss[f"{PAGE}.guidance"]), method=ss[f"{PAGE}.method"],
        fidelity=float(ss[f"{PAGE}.fidelity"]), num_images=int(ss[f"{PAGE}.variations"]), seed=int(ss["seed"]),
        width=width, height=height, width_multiplier=multiplier,
        shifted=bool(ss[f"{PAGE}.shifted"]) and multiplier > 1, circular=bool(ss[f"{PAGE}.circular"]) and multiplier > 1,
        region_words=region_words,
        region_prompts=region_prompts,
        free_background=bool(ss[f"{PAGE}.free_background"]), scheduler=shared.recommended().scheduler,
        image_prompt=image_prompt)
    if shared.live_toggle(PAGE):
        live = live_scribble_settings(settings, int(ss[f"{PAGE}.live_steps"]))
        shared.live_preview(PAGE, engine, lambda: scribble_request(live, None if blank else scribble),
                            shared.live_signature(blank or png_bytes(scribble), live))

    busy = shared.active_job(PAGE) is not None
    if shared.generate_button(PAGE, engine):
        try:
            request = scribble_request(settings, None if blank else scribble)
        except StudioError as exc:
            ss[f"{PAGE}.message"] = ("error", str(exc))
        else:
            ui = ui_state(PAGE, SETTINGS, canvas=canvas_state(PAGE, drawing, (cw, ch),
                                                              scribble_png=b64(png_bytes(scribble))))
            shared.submit(PAGE, engine, request, title=settings.prompt, ui=ui)
            ss[f"{PAGE}.note"] = "The canvas is empty, so this one is made from the prompt alone." if blank else None
        st.rerun()

    shared.progress_panel(PAGE)
    shared.show_message(PAGE)
    if ss.get(f"{PAGE}.note") and busy:
        st.caption(ss[f"{PAGE}.note"])

    def use_as_canvas(item) -> None:
        widgets.clear_canvas(PAGE)  # strokes and the uploaded image go; the result is the new start
        widgets.reload_canvas(PAGE, background=item.image_bytes())

    def actions(item, container) -> None:
        container.button("Use as canvas", key=f"{PAGE}.use.{item.id}", icon=":material/edit:",
                         on_click=use_as_canvas, args=(item,),
                         help="Start a new scribble on top of this result, to refine it step by step.")

    if shared.result_items(PAGE):
        st.subheader("Results", anchor=False)
        shared.show_results(PAGE, actions)
    elif not busy and not ss.get(f"{PAGE}.message"):
        button = "Render full quality" if ss.get(f"{PAGE}.live") else "Generate"
        st.info(f"Draw on the canvas, type a prompt and press **{button}**. Results appear here.",
                icon=":material/lightbulb:")
