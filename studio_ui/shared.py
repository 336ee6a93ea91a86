"""What every page shares: the cached engine, the job queue, the gallery, the sidebar,
the progress panel and the results panel (streamlit code; ``widgets.py`` and
``restore.py`` are the others; the rest of studio_ui is plain Python).

State conventions: a page's keys start with its name (``scribble.prompt``); widgets use
``persist_state="session"`` so values survive page switches; components without that
(canvas, data editor, uploader) carry ``<page>.rev`` in their key and are remounted from
saved state when the page is entered or restored from the gallery.
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import math
import random
import time
import uuid
from typing import Any, Callable, Iterator

import streamlit as st

from core.engine import Engine
from core.errors import StudioError
from core.inputs import open_image
from core.latent_rgb import latent_rgb_map
from core.loading import HOW_TO_GET_WEIGHTS, LoadOptions, available_models, default_model, models_dir
from core.model_settings import Recommended, recommended_for
from core.upscale import available_upscalers
from core.requests import MAX_SEED, random_seed

from .canvas import png_bytes
from .gallery import GalleryItem, GalleryStore, outputs_dir
from .jobs import CANCELLED, DONE, FAILED, JobQueue, describe_error
from .methods import UPSCALE_FACTORS, UPSCALER_LABELS, upscale_request
from .restore import restore_ui
from .site import PAGE_TITLES

ss = st.session_state
OTHER_MODEL = "Other (path or hub id)…"
GLOBAL_CSS = """<style>
.block-container, [data-testid="stMainBlockContainer"] { padding-top: 2.2rem; padding-bottom: 2rem; }
h1 { padding-top: 0 !important; }
</style>"""
JOB_PARAM = "job"  # the address's query parameter naming the page's latest job


# --- shared resources --------------------------------------------------------------------

@st.cache_resource(show_spinner="Loading the model (once per model, shared by everyone)…", max_entries=4)
def _load_engine(model: str | None, device: str | None, dtype: str | None, attention_slicing: bool,
                 vae_tiling: bool, cpu_offload: bool, lora: str | None = None, lora_scale: float = 1.0) -> Engine:
    engine = Engine.load(LoadOptions(model=model, device=device, dtype=dtype, attention_slicing=attention_slicing,
                                     vae_tiling=vae_tiling, cpu_offload=cpu_offload, lora=lora,
                                     lora_scale=lora_scale))
    latent_rgb_map(engine.bundle.vae)  # fitted now, once: progress previews and the first live preview need it
    return engine


@st.cache_resource
def get_queue() -> JobQueue:
    """The one job queue (and worker thread) of this server, shared by all sessions."""
    return JobQueue()


def get_gallery() -> GalleryStore:
    return GalleryStore(outputs_dir())


def session_id() -> str:
    if "_session" not in ss:
        ss["_session"] = uuid.uuid4().hex[:8]
    return ss["_session"]


def init_state(defaults: dict[str, Any]) -> None:
    """Give keys their first value (widgets then read them; never pass ``value=`` too)."""
    for key, value in defaults.items():
        if key not in ss:
            ss[key] = value


def _valid(value: Any, default: Any, allowed: Any) -> bool:
    if isinstance(default, bool):
        ok = type(value) is bool
    elif isinstance(default, int):
        ok = type(value) is int
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, type(default))
    if not ok or allowed is None:
        return ok
    if isinstance(allowed, tuple):
        return allowed[0] <= value <= allowed[1]
    return value in allowed


def keep_valid(page: str, rules: dict[str, tuple[Any, Any]]) -> list[str]:
    """Reset the page's settings that its widgets would refuse, to their defaults.

    ``rules`` maps a setting (``{page}.{name}``) to (default, allowed): ``allowed`` is a
    (low, high) range, a collection of options, or None (any value of the default's type).
    A result reopened from the gallery brings its sidecar's settings back, and a sidecar may
    be edited, come from someone else, or predate a widget's range: a bad value would make
    the widget raise. Says which settings were reset in the page's message."""
    reset = []
    for name, (default, allowed) in rules.items():
        key = f"{page}.{name}"
        if key in ss and not _valid(ss[key], default, allowed):
            ss[key] = default
            reset.append(name)
    if reset:
        ss[f"{page}.message"] = ("warning", "Some saved settings could not be used and are back to their "
                                            f"defaults: {', '.join(reset)}.")
    return reset


def rev(page: str) -> int:
    return int(ss.get(f"{page}.rev", 0))


def bump_rev(page: str) -> None:
    ss[f"{page}.rev"] = rev(page) + 1


_ROUTED: contextvars.ContextVar[bool] = contextvars.ContextVar("studio_routed", default=False)


@contextlib.contextmanager
def routed() -> Iterator[None]:
    """app.py runs the page inside this: the page then knows app.py's sidebar is drawn."""
    token = _ROUTED.set(True)
    try:
        yield
    finally:
        _ROUTED.reset(token)


def ensure_router() -> None:
    """Make sure the page runs under app.py (its router and sidebar).

    Streamlit treats a ``pages/`` folder next to the main script as a legacy multipage app
    until the main script has called ``st.navigation`` once in the process (AppTest even
    resets that before every run): sessions that start before then, such as the first
    visit of a fresh server to a deep link like ``/regions``, run the page file alone.
    Then switch the legacy mode off and, on a session's first run (no click to lose),
    rerun: app.py routes the same page (its hash is the same in both modes). Otherwise
    (AppTest) draw the sidebar here instead."""
    if _ROUTED.get():
        return
    try:
        from streamlit.runtime.pages_manager import PagesManager

        PagesManager.uses_pages_directory = False
    except ImportError:  # pragma: no cover - a Streamlit without this internal
        pass
    if not ss.get("_rerouted"):
        ss["_rerouted"] = True
        if "sb.model" not in ss:  # the session's first run (the sidebar never ran)
            st.rerun()
    sidebar()


def enter_page(page: str) -> bool:
    """Call first on each page: True when the person just arrived (then remount stateful
    components from saved state)."""
    ensure_router()
    pick_up_job(page)
    fresh = ss.get("_entered") != page
    ss["_entered"] = page
    if fresh:
        bump_rev(page)
    return fresh


# --- no-model message and the engine -------------------------------------------------------

def no_model_message() -> str:
    return (f"**No model found** in `{models_dir()}`. To get one: {HOW_TO_GET_WEIGHTS}; or put the bundled demo "
            "model in `pretrained_models/studio-demo`; or pick **Other** in the sidebar's model list and type a "
            "folder path or a hub id (`org/name`). Then reload this page.")


def load_options() -> LoadOptions | None:
    """The sidebar's choice, or None when there is no model to load."""
    return ss.get("_load_options")


def current_engine() -> Engine | None:
    """The loaded engine for the sidebar's options (cached), or None; errors go to
    ``ss['_engine_error']`` as a message that says how to fix them."""
    options = load_options()
    ss["_engine_error"] = None
    if options is None:
        ss["_engine_error"] = no_model_message()
        return None
    try:
        return _load_engine(options.model, options.device, options.dtype, options.attention_slicing,
                            options.vae_tiling, options.cpu_offload, options.lora, options.lora_scale)
    except StudioError as exc:
        ss["_engine_error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - show a message, never a traceback
        ss["_engine_error"] = describe_error(exc)
    return None


def recommended() -> Recommended:
    """The sidebar model's recommended settings (``studio.json``; none when it cannot be read)."""
    options = load_options()
    try:
        return recommended_for(options.model) if options is not None else Recommended()
    except StudioError:
        return Recommended()


def follow_model_defaults(page: str, defaults: dict[str, tuple[str, Any]]) -> None:
    """Settings the person has not changed take the model's recommended values (and follow a
    change of model); ``defaults`` maps a page key to (recommendation name, fallback)."""
    rec = recommended()
    for key, (name, fallback) in defaults.items():
        full, auto = f"{page}.{key}", f"_auto.{page}.{key}"
        value = rec.get(name, fallback)
        if full not in ss or (auto in ss and ss[full] == ss[auto]):
            ss[full] = value
        ss[auto] = value


def native_latent(engine: Engine) -> int:
    """The model's native size in latent pixels (MultiDiffusion's view size)."""
    return engine.bundle.native_size // engine.bundle.vae_scale_factor


def engine_error() -> str | None:
    return ss.get("_engine_error")


# --- the sidebar ----------------------------------------------------------------------------

def _copy_back(key: str) -> None:
    ss[key] = ss[f"_w.{key}"]


def bound(widget: Callable[..., Any], label: str, key: str, **kwargs: Any) -> Any:
    """A widget showing the plain state value ``ss[key]`` (kept even when the widget is
    not drawn, and settable from anywhere before the run): the widget's own key is
    ``_w.<key>``, refreshed from ``key`` each run and copied back when the person edits it."""
    ss[f"_w.{key}"] = ss[key]
    return widget(label, key=f"_w.{key}", on_change=_copy_back, args=(key,), **kwargs)


def _new_seed() -> None:
    ss["seed"] = random_seed()


def _device_choices() -> list[str]:
    choices = ["auto", "cpu"]
    try:
        import torch

        if torch.cuda.is_available():
            choices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count()) if torch.cuda.device_count() > 1]
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            choices.append("mps")
    except Exception:  # pragma: no cover
        pass
    return choices


def _options(model: str) -> LoadOptions:
    """The sidebar's LoadOptions; the LoRA is the one typed, else the model's recommended one
    (a missing or broken LoRA file is reported when the engine loads, as one message)."""
    lora, scale = ss["sb.lora"].strip() or None, float(ss["sb.lora_scale"])
    if lora is None:
        try:
            rec = recommended_for(model)
        except StudioError:
            rec = Recommended()
        lora, scale = rec.lora, rec.get("lora_scale", 1.0)
    return LoadOptions(model=model, device=ss["sb.device"], dtype=ss["sb.dtype"],
                       attention_slicing=ss["sb.attention_slicing"], vae_tiling=ss["sb.vae_tiling"],
                       cpu_offload=ss["sb.cpu_offload"], lora=lora, lora_scale=scale)


def sidebar() -> None:
    """Model picker, device and precision, low-memory switches, seed; loads the engine."""
    names = available_models()
    try:
        default = default_model()
    except StudioError:
        default = OTHER_MODEL
    init_state({"sb.model": default, "sb.model_path": "", "sb.device": "auto", "sb.dtype": "auto",
                "sb.attention_slicing": False, "sb.vae_tiling": False, "sb.cpu_offload": False, "sb.lora": "",
                "sb.lora_scale": 1.0,
                "seed": random.randint(0, 99999)})
    if ss["sb.model"] not in names + [OTHER_MODEL]:
        ss["sb.model"] = default
    st.html(GLOBAL_CSS)
    with st.sidebar:
        st.subheader("Model", anchor=False)
        bound(st.selectbox, "Model", "sb.model", options=names + [OTHER_MODEL], label_visibility="collapsed",
              help=f"Model folders found in {models_dir()} (diffusers format), or another path / hub id.")
        model: str | None = ss["sb.model"]
        if model == OTHER_MODEL:
            bound(st.text_input, "Folder, .safetensors file or hub id", "sb.model_path",
                  placeholder="pretrained_models/sd15 or org/name")
            model = ss["sb.model_path"].strip() or None
        with st.expander("Device, precision and memory"):
            bound(st.selectbox, "Device", "sb.device", options=_device_choices())
            bound(st.selectbox, "Precision", "sb.dtype", options=["auto", "fp32", "fp16", "bf16"],
                  help="auto: fp16 on a CUDA GPU, fp32 elsewhere")
            st.caption("Low-memory switches (use them if you run out of memory):")
            bound(st.toggle, "Attention slicing", "sb.attention_slicing", help="lower peak memory, a little slower")
            bound(st.toggle, "VAE tiling", "sb.vae_tiling", help="decode large images and panoramas tile by tile")
            bound(st.toggle, "CPU offload", "sb.cpu_offload", help="keep models on the CPU between uses (CUDA only)")
            bound(st.text_input, "LoRA (optional)", "sb.lora", placeholder="pretrained_models/lora/x.safetensors",
                  help="A LoRA .safetensors file fused into the model, e.g. an LCM-LoRA for few-step sampling "
                       "(the model folder's studio.json may recommend one; this field wins).")
            if ss["sb.lora"].strip():
                bound(st.number_input, "LoRA strength", "sb.lora_scale", min_value=0.0, max_value=4.0, step=0.1)
        ss["_load_options"] = None if model is None else _options(model)
        engine = current_engine()
        if engine is not None:
            info = engine.info()
            st.caption(f"**{info['model']}** · {info['device']} · {info['dtype']} · {info['native_size']} px native")
        else:
            st.error(engine_error() or "No model loaded.", icon=":material/error:")

        st.subheader("Seed", anchor=False)
        bound(st.number_input, "Seed", "seed", min_value=0, max_value=MAX_SEED, step=1, label_visibility="collapsed",
              help="The same seed, prompt and settings give the same image; variation i uses seed + i.")
        st.button("New seed", icon=":material/casino:", on_click=_new_seed, width="stretch", key="new_seed")

        queue = get_queue()
        pending = queue.pending()
        if pending:
            st.caption(f":material/hourglass_top: {pending} request(s) in the shared queue")


# --- jobs -----------------------------------------------------------------------------------

def submit(page: str, engine: Engine, request: Any, *, title: str, ui: dict[str, Any],
           saved_as: str | None = None, notes: list[str] | None = None) -> None:
    """Queue ``request`` on the shared worker; its results are saved to the gallery (as made
    on ``saved_as``, default this page). ``notes`` join the result's warnings."""
    gallery = get_gallery()

    def work(progress: Callable[[Any], bool]) -> dict[str, Any]:
        result = engine.run(request, progress)
        items = gallery.save(result, engine.bundle, page=saved_as or page, title=title, ui=ui)
        return {"items": [item.id for item in items], "warnings": list(notes or []) + list(result.warnings),
                "seconds": round(sum(result.timings.values()), 1)}

    label = PAGE_TITLES.get(saved_as or page, saved_as or page)
    job = get_queue().submit(session_id(), f"{label}: {title[:40]}", work, page=page,
                             context=None if saved_as else ui)
    ss[f"{page}.job"] = job.id
    ss[f"{page}.message"] = None
    st.query_params[JOB_PARAM] = job.id  # a reload of this address finds the job again


def pick_up_job(page: str) -> None:
    """After a reload (a new session with the old address), take back the job named in the
    address: its drawing and settings, and its progress or result. Once per session, and
    only a job this page submitted (the id is random, so only its address knows it)."""
    if ss.get("_picked_up") or ss.get(f"{page}.job"):
        return
    ss["_picked_up"] = True
    job = get_queue().get(st.query_params.get(JOB_PARAM))
    if job is None or job.page != page:
        return
    items = [item for item in (get_gallery().get(i) for i in (job.result or {}).get("items", [])) if item]
    ui = job.context if job.context is not None else (items[0].ui if items else None)
    if isinstance(ui, dict) and "upscale" not in ui:  # an upscale leaves the page's own state alone
        restore_ui(page, ui)
    ss[f"{page}.job"] = job.id
    if not job.done:
        ss[f"{page}.message"] = ("info", "Picked up your request after the page reloaded; your drawing and "
                                         "settings are back.")


def generate_button(page: str, engine: Any) -> bool:
    """The page's Generate button (Render full quality in live mode), disabled while its job
    runs or without a model."""
    busy = active_job(page) is not None
    label = "Render full quality" if ss.get(f"{page}.live") else "Generate"
    return st.button("Generating…" if busy else label, type="primary", icon=":material/auto_awesome:",
                     disabled=busy or engine is None, width="stretch", key=f"{page}.generate")


def active_job(page: str):
    job = get_queue().get(ss.get(f"{page}.job"))
    return job if job is not None and not job.done else None


def collect(page: str) -> None:
    """Move a finished job's outcome into the page's results or message."""
    job_id = ss.get(f"{page}.job")
    if not job_id:
        return
    job = get_queue().get(job_id)
    if job is None:
        ss[f"{page}.job"] = None
        return
    if not job.done:
        return
    ss[f"{page}.job"] = None
    if job.status == DONE:
        ss[f"{page}.results"] = list(job.result["items"])
        done = f"Done in {job.result['seconds']} s — saved to the gallery."
        warnings = job.result.get("warnings") or []
        ss[f"{page}.message"] = ("warning", " ".join([done, *warnings])) if warnings else ("success", done)
    elif job.status == CANCELLED:
        ss[f"{page}.message"] = ("info", "Cancelled. Nothing was saved; your drawing and settings are unchanged.")
    elif job.status == FAILED:
        ss[f"{page}.message"] = ("error", job.error or "The request failed.")


def show_message(page: str) -> None:
    message = ss.get(f"{page}.message")
    if message:
        kind, text = message
        {"error": st.error, "warning": st.warning, "info": st.info, "success": st.success}[kind](text)


def _cancel(job_id: str) -> None:
    get_queue().cancel(job_id)


@st.fragment(run_every=0.5)
def _progress_fragment(page: str) -> None:
    queue = get_queue()
    job = queue.get(ss.get(f"{page}.job"))
    if job is None or job.done:
        st.rerun()  # the whole page: show the result
    with st.container(border=True):
        position = queue.position(job)
        if job.status == "queued":
            ahead = "1 request is" if position == 1 else f"{position} requests are"
            st.progress(0.0, text=f"Waiting in the queue: {ahead} ahead of yours")
        elif job.total:
            stage = "" if job.stage in ("", "denoise") else f"{job.stage.capitalize()} · "
            st.progress(job.fraction, text=f"{stage}Step {job.step} of {job.total}")
        else:
            st.progress(0.0, text="Starting…")
        if job.preview is not None:
            st.image(job.preview, caption="Work in progress", width=256)
        st.button("Cancel", icon=":material/stop_circle:", key=f"{page}.cancel", on_click=_cancel,
                  args=(job.id,), help="Stop this request; nothing is saved.")


def progress_panel(page: str) -> None:
    """Queue place, progress bar, live preview and Cancel, refreshed without blocking."""
    if active_job(page) is not None:
        _progress_fragment(page)


# --- live mode --------------------------------------------------------------------------------

def live_toggle(page: str) -> bool:
    """The page's Live switch; turning it off drops the pending preview and the last one."""
    st.toggle("Live preview", key=f"{page}.live", persist_state="session", on_change=_live_switched, args=(page,),
              help="The picture follows your drawing: after each stroke (or change of prompt) a quick preview is "
                   "made with the same seed on the fast path. Render full quality makes the final picture with "
                   "the method and steps you chose.")
    return bool(ss.get(f"{page}.live"))


def _live_switched(page: str) -> None:
    if not ss.get(f"{page}.live"):
        job_id = ss.pop(f"{page}.live_job", None)
        if job_id:
            get_queue().cancel(job_id)
        for key in ("live_sig", "live_image", "live_seconds", "live_note"):
            ss.pop(f"{page}.{key}", None)


def live_signature(*parts: Any) -> str:
    """A short digest of what a live preview depends on (image bytes and settings' reprs)."""
    digest = hashlib.sha1()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def live_preview(page: str, engine: Engine | None, build: Callable[[], Any], signature: str) -> None:
    """Live mode: when ``signature`` (the drawing and settings) changed since the last
    preview, queue a new one from ``build()`` (it replaces this page's pending one, see
    studio_ui.jobs), then show the newest finished preview, refreshed without a rerun of
    the page. Previews are not saved to the gallery."""
    if engine is None:
        return
    if signature != ss.get(f"{page}.live_sig"):
        ss[f"{page}.live_sig"] = signature
        try:
            request = build()
        except StudioError as exc:
            ss[f"{page}.live_note"] = str(exc)
            old = ss.pop(f"{page}.live_job", None)
            if old:
                get_queue().cancel(old)
        else:
            ss[f"{page}.live_note"] = None

            def work(progress: Callable[[Any], bool]) -> dict[str, Any]:
                start = time.perf_counter()
                result = engine.run(request, progress)
                seconds = time.perf_counter() - start
                return {"png": png_bytes(result.images[0]), "seconds": seconds, "warnings": list(result.warnings)}

            label = PAGE_TITLES.get(page, page)
            ss[f"{page}.live_job"] = get_queue().submit(session_id(), f"{label}: live preview", work, page=page,
                                                        live=True).id
    ss["_live_inline"] = True  # in the page's own run the panel does not wait: the rest of the page is drawn
    try:
        _live_fragment(page)
    finally:
        ss["_live_inline"] = False


LIVE_POLL, LIVE_WAIT = 0.5, 0.35  # seconds: the panel's refresh, and how long a refresh waits for the preview


@st.fragment(run_every=LIVE_POLL)
def _live_fragment(page: str) -> None:
    """The live panel. Refreshing it often slows the preview down (each refresh is a run of
    the fragment on the server: at every 0.1 s the preview took twice as long), so it refreshes
    every LIVE_POLL seconds and, while a preview is being made, waits up to LIVE_WAIT for it
    (asleep, not polling): a new preview shows within milliseconds of being ready most of
    the time. A stroke made meanwhile is handled after that wait, its drawing never blocked."""
    job = get_queue().get(ss.get(f"{page}.live_job"))
    if job is not None and not job.done and not ss.get("_live_inline"):
        job.finished_event.wait(LIVE_WAIT)
    if job is not None and job.done:
        if job.status == DONE:
            ss[f"{page}.live_image"], ss[f"{page}.live_seconds"] = job.result["png"], job.result["seconds"]
            ss[f"{page}.live_note"] = " ".join(job.result["warnings"]) or None
        elif job.status == FAILED:
            ss[f"{page}.live_note"] = job.error
        ss[f"{page}.live_job"] = None
        job = None
    with st.container(border=True, key=f"{page}-live-panel"):
        image, note = ss.get(f"{page}.live_image"), ss.get(f"{page}.live_note")
        if job is not None:
            status = ":material/autorenew: Updating the preview…"
        elif image is not None:
            status = f":material/bolt: Live preview · {ss.get(f'{page}.live_seconds', 0):.1f} s"
        else:
            status = "Draw on the canvas: the preview follows your strokes."
        st.caption(status)
        if image is not None:
            st.image(image, width="stretch")
        if note:
            st.caption(f":material/info: {note}")


# --- results ----------------------------------------------------------------------------------

def result_items(page: str) -> list[GalleryItem]:
    gallery = get_gallery()
    items = [gallery.get(item_id) for item_id in ss.get(f"{page}.results") or []]
    return [item for item in items if item is not None]


def show_results(page: str, actions: Callable[[GalleryItem, Any], None] | None = None, columns: int = 2) -> None:
    """The last results of this page: image, seed, download, and page-specific actions."""
    items = result_items(page)
    if not items:
        return
    cols = st.columns(min(columns, len(items)))
    for i, item in enumerate(items):
        with cols[i % len(cols)]:
            st.image(str(item.image_path), caption=f"Seed {item.meta.get('seed')}", width="stretch")
            st.download_button("Download PNG", item.image_bytes(), file_name=item.image_path.name, mime="image/png",
                               key=f"{page}.dl.{item.id}", icon=":material/download:", on_click="ignore",
                               help="The PNG carries its full recipe in its metadata.")
            if actions is not None:
                actions(item, st)
            upscale_button(page, item, current_engine())


def upscale_button(page: str, item: GalleryItem, engine: Engine | None) -> None:
    """"Upscale" for a result: factor, upscaler, optional redraw; queued like any request and
    saved as a new gallery entry whose recipe embeds this image (with its hash)."""
    key = f"{page}.up.{item.id}"
    with st.popover("Upscale", icon=":material/zoom_out_map:", width="stretch",
                    disabled=engine is None or active_job(page) is not None):
        choices = available_upscalers()
        init_state({f"{key}.scale": 2, f"{key}.upscaler": choices[0], f"{key}.refine": 0.0})
        if ss[f"{key}.upscaler"] not in choices:
            ss[f"{key}.upscaler"] = choices[0]
        st.segmented_control("Factor", UPSCALE_FACTORS, format_func=lambda f: f"×{f}", key=f"{key}.scale",
                             required=True)
        st.selectbox("Upscaler", choices, key=f"{key}.upscaler", format_func=lambda n: UPSCALER_LABELS.get(n, n),
                     help="A super-resolution network from pretrained_models/upscalers (.safetensors; see the "
                          "README), or a plain resampler.")
        st.slider("Refine", 0.0, 0.6, step=0.05, key=f"{key}.refine",
                  help="0: the network's enlargement as it is. Above 0: the model redraws the enlarged image at "
                       "this strength, tile by tile at its native size, with the image's own prompt: more "
                       "detail, slower (about steps × refine steps per tile).")
        factor = int(ss[f"{key}.scale"] or 2)
        size = item.meta.get("size")
        if isinstance(size, list) and all(isinstance(v, int) for v in size):
            st.caption(f"{size[0]}×{size[1]} → {size[0] * factor}×{size[1] * factor} px")
        if st.button("Upscale", type="primary", key=f"{key}.go", width="stretch"):
            try:
                image = open_image(item.image_bytes(), "The gallery image")
                request, notes = upscale_request(image, item.recipe, scale=factor, upscaler=ss[f"{key}.upscaler"],
                                                 refine=float(ss[f"{key}.refine"]))
            except StudioError as exc:
                ss[f"{page}.message"] = ("error", str(exc))
            else:
                ui = {**item.ui, "page": item.ui.get("page") or item.page,
                      "upscale": {"source": item.id, "scale": factor, "upscaler": request.upscaler,
                                  "refine": request.refine}}
                submit(page, engine, request, title=f"{item.title} (×{factor})", ui=ui, saved_as="upscale",
                       notes=notes)
            st.rerun()


def require_engine() -> Engine | None:
    """The engine, or None after showing why there is none and how to fix it."""
    engine = current_engine()
    if engine is None:
        st.warning(engine_error() or no_model_message(), icon=":material/warning:")
    return engine
