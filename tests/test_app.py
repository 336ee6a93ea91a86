"""The Streamlit app, headless (AppTest): every page, the no-model message, generating with
progress, the gallery round trip, state that survives page switches, and the shared
job queue (one worker; a failure or cancel in one session leaves the others working)."""
from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.errors import StudioError
from studio_ui.jobs import CANCELLED, DONE, FAILED, OOM_HELP, JobQueue, describe_error

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PAGES = {"scribble": "pages/scribble.py", "regions": "pages/regions.py", "panorama": "pages/panorama.py",
         "gallery": "pages/gallery.py"}
TITLES = {"scribble": "Scribble to Art", "regions": "Region Painter", "panorama": "Panorama", "gallery": "Gallery"}
DRAWING = {"version": "7.4.0", "objects": [
    {"type": "Rect", "left": 40, "top": 200, "width": 400, "height": 240, "fill": "#43a047", "stroke": "#43a047",
     "strokeWidth": 12, "originX": "left", "originY": "top", "strokeUniform": True},
    {"type": "Circle", "left": 300, "top": 110, "radius": 60, "width": 120, "height": 120, "fill": "#e53935",
     "stroke": "#e53935", "strokeWidth": 12, "originX": "left", "originY": "center"},
]}


@pytest.fixture
def studio(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path, tmp_path: Path) -> Path:
    """Models: a folder holding only the tiny model; outputs: a fresh temp folder."""
    monkeypatch.setenv("STUDIO_MODELS_DIR", str(tiny_model_dir.parent))
    monkeypatch.setenv("STUDIO_OUTPUTS_DIR", str(tmp_path / "outputs"))
    return tmp_path / "outputs"


def open_page(page: str, **state) -> AppTest:
    """A new session on ``page`` (the first run is the default page, Scribble to Art).

    AppTest runs later pages as a legacy multipage app (there is a ``pages/`` folder), so
    they run without app.py; shared.ensure_router then draws the sidebar itself."""
    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    if page != "scribble":
        at.switch_page(PAGES[page]).run()
        assert not at.exception, at.exception
    return at


def wait_for_job(at: AppTest, page: str, timeout: float = 60) -> None:
    end = time.time() + timeout
    while time.time() < end:
        at.run()
        assert not at.exception, at.exception
        if not at.session_state[f"{page}.job"]:
            return
        time.sleep(0.2)
    raise AssertionError(f"the {page} job did not finish in {timeout} s")


def draw(at: AppTest, page: str, drawing: dict) -> None:
    """Put a drawing on the page's canvas as if restored (the canvas remounts from state)."""
    at.session_state[f"{page}.drawing"] = drawing
    at.session_state["_entered"] = None
    at.run()


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_runs(studio: Path, page: str) -> None:
    at = open_page(page)
    assert at.title[0].value == TITLES[page]
    assert not at.error and not any("No model" in w.value for w in at.warning)
    assert at.session_state["_load_options"].model == "tiny-sd"


def test_sidebar_shows_model_device_precision_and_seed(studio: Path) -> None:
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert "**tiny-sd** · cpu · fp32 · 64 px native" in [c.value for c in at.sidebar.caption]
    assert at.sidebar.selectbox(key="_w.sb.model").options == ["tiny-sd", "Other (path or hub id)…"]
    before = at.sidebar.number_input(key="_w.seed").value
    at.sidebar.button(key="new_seed").click().run()
    assert at.session_state["seed"] != before and at.sidebar.number_input(key="_w.seed").value != before
    at.sidebar.number_input(key="_w.seed").set_value(1234).run()
    assert at.session_state["seed"] == 1234
    at.switch_page(PAGES["gallery"]).run()  # every page has the sidebar
    assert "**tiny-sd** · cpu · fp32 · 64 px native" in [c.value for c in at.sidebar.caption]
    assert at.sidebar.number_input(key="_w.seed").value == 1234
    other = AppTest.from_file(APP, default_timeout=60)
    other.session_state["sb.model"] = "Other (path or hub id)…"
    other.session_state["sb.model_path"] = "/no/such/folder"
    other.run()
    assert "not found" in " ".join(e.value for e in other.sidebar.error)
    assert any("not found" in w.value for w in other.warning)


@pytest.mark.parametrize("page", list(PAGES))
def test_no_model_says_how_to_get_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, page: str) -> None:
    monkeypatch.setenv("STUDIO_MODELS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("STUDIO_OUTPUTS_DIR", str(tmp_path / "outputs"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    messages = " ".join(e.value for e in at.sidebar.error)
    assert "No model found" in messages and "huggingface-cli download" in messages and "studio-demo" in messages
    at = open_page(page)
    if page != "gallery":
        warning = " ".join(w.value for w in at.warning)
        assert "No model found" in warning and "huggingface-cli download" in warning
        assert at.button(key=f"{page}.generate").disabled


def test_scribble_generates_and_reopens_from_the_gallery(studio: Path) -> None:
    at = open_page("scribble", **{"scribble.steps": 4, "seed": 11})
    draw(at, "scribble", DRAWING)
    at.text_area(key="scribble.prompt").set_value("green trees and a small house in a field of flowers")
    at.selectbox(key="scribble.method").set_value("GradOP+ fast")
    at.toggle(key="scribble.name_regions").set_value(True).run()
    assert not at.exception, at.exception
    at.session_state["scribble.rows"] = {"#43a047": {"words": "trees"}, "#e53935": {"words": ""}}
    at.session_state["scribble.rows_rev"] = 1  # as if typed in the table
    at.button(key="scribble.generate").click().run()
    assert at.session_state["scribble.job"]
    wait_for_job(at, "scribble")
    assert not at.error, [e.value for e in at.error]
    results = at.session_state["scribble.results"]
    assert len(results) == 1 and (studio / f"{results[0]}.png").is_file()

    at.switch_page(PAGES["gallery"]).run()
    at.button(key=f"gallery.view.{results[0]}").click().run()
    at.session_state["scribble.prompt"] = "something else"  # changed since: reopening must undo it
    at.session_state["seed"] = 99
    at.button(key="gallery.open").click().run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Scribble to Art"
    assert at.text_area(key="scribble.prompt").value == "green trees and a small house in a field of flowers"
    assert at.selectbox(key="scribble.method").value == "GradOP+ fast"
    assert at.session_state["seed"] == 11 and at.session_state["scribble.steps"] == 4
    assert at.session_state["scribble.drawing"]["objects"] == DRAWING["objects"]
    assert at.session_state["scribble.rows"]["#43a047"]["words"] == "trees"
    assert any("Opened from the gallery" in i.value for i in at.info)


def test_blank_canvas_is_text_to_image_and_errors_are_messages(studio: Path) -> None:
    at = open_page("scribble", **{"scribble.steps": 2})
    at.button(key="scribble.generate").click().run()
    assert any("Type a prompt first" in e.value for e in at.error)  # a message, not a traceback
    at.text_area(key="scribble.prompt").set_value("a red sun over purple mountains at sunset")
    at.button(key="scribble.generate").click().run()
    wait_for_job(at, "scribble")
    assert at.session_state["scribble.results"] and not at.error


def test_state_survives_page_switches(studio: Path) -> None:
    at = open_page("scribble")
    draw(at, "scribble", DRAWING)
    at.text_area(key="scribble.prompt").set_value("a castle on a hill").run()
    at.slider(key="scribble.fidelity").set_value(0.8).run()
    at.switch_page(PAGES["gallery"]).run()
    at.switch_page(PAGES["scribble"]).run()
    assert at.text_area(key="scribble.prompt").value == "a castle on a hill"
    assert at.slider(key="scribble.fidelity").value == 0.8
    assert at.session_state["scribble.initial"]["objects"] == DRAWING["objects"]  # the canvas remounts with it
    at.selectbox(key="scribble.size").set_value("Landscape 3:2").run()  # 448x299 canvas: the drawing follows
    rect = at.session_state["scribble.initial"]["objects"][0]
    assert rect["scaleX"] == 1.0 and rect["scaleY"] == pytest.approx(299 / 448)


def test_gallery_lists_filters_and_deletes(studio: Path) -> None:
    at = open_page("scribble", **{"scribble.steps": 2, "scribble.variations": 2})
    at.text_area(key="scribble.prompt").set_value("ink sketch of a cat and a dog by the sea")
    at.button(key="scribble.generate").click().run()
    wait_for_job(at, "scribble")
    first, second = at.session_state["scribble.results"]
    at.switch_page(PAGES["gallery"]).run()
    assert any("2 of 2 images" in c.value for c in at.caption)
    at.text_input(key="gallery.search").set_value("no such prompt").run()
    assert any("0 of 2 images" in c.value for c in at.caption)
    at.text_input(key="gallery.search").set_value("").run()
    at.button(key=f"gallery.view.{first}").click().run()
    assert {b.label for b in at.get("download_button")} >= {"PNG + recipe", "Recipe JSON"}
    at.button(key="gallery.delete").click().run()
    assert not (studio / f"{first}.png").exists() and not (studio / f"{first}.json").exists()
    assert (studio / f"{second}.png").exists() and any("1 of 1 images" in c.value for c in at.caption)


def test_region_painter_finds_colours_and_warns_about_unnamed_ones(studio: Path) -> None:
    at = open_page("regions", **{"regions.size": "Square"})
    draw(at, "regions", DRAWING)
    rows = at.session_state["regions.rows"]
    assert set(rows) == {"#43a047", "#e53935"}  # white is the background, not a region
    assert any("No prompt for" in w.value for w in at.warning)
    at.session_state["regions.rows"] = {"#43a047": {"prompt": "a meadow", "negative": "", "seed": None},
                                        "#e53935": {"prompt": "a red sun", "negative": "", "seed": 3}}
    at.session_state["regions.rows_rev"] = 1
    at.session_state["regions.steps"] = 2
    at.run()
    assert not any("No prompt for" in w.value for w in at.warning)
    at.button(key="regions.generate").click().run()
    wait_for_job(at, "regions")
    assert not at.error, [e.value for e in at.error]
    [item] = at.session_state["regions.results"]
    meta = json.loads((studio / f"{item}.json").read_text())
    assert meta["kind"] == "regions" and meta["size"] == [64, 64]  # square at the tiny model's 64 px
    assert [r["prompt"] for r in meta["recipe"]["request"]["regions"]] == ["a meadow", "a red sun"]
    assert meta["ui"]["rows"]["#e53935"]["seed"] == 3

    at.slider(key="regions.multiplier").set_value(2).run()  # the same map as a panorama, in one pass
    assert any("128×64" in c.value for c in at.caption)
    at.segmented_control(key="regions.mode").set_value("attention").run()
    at.toggle(key="regions.shifted").set_value(True).run()
    at.button(key="regions.generate").click().run()
    wait_for_job(at, "regions")
    assert not at.error, [e.value for e in at.error]
    [item] = at.session_state["regions.results"]
    meta = json.loads((studio / f"{item}.json").read_text())
    assert meta["kind"] == "panorama" and meta["size"] == [128, 64]
    assert meta["recipe"]["request"]["attention"] is True and meta["recipe"]["request"]["windows"] == "shifted"
    assert meta["ui"]["settings"]["mode"] == "attention" and meta["ui"]["settings"]["shifted"] is True


def test_panorama_presets_and_generation(studio: Path) -> None:
    at = open_page("panorama", **{"panorama.steps": 2})
    at.segmented_control(key="panorama.preset").set_value("360").run()
    assert any("256×64" in c.value and "wraps around" in c.value for c in at.caption)
    at.segmented_control(key="panorama.preset").set_value("2:1").run()
    assert any("128×64" in c.value for c in at.caption)  # 2:1 at the tiny model's 64 px
    at.button(key="panorama.generate").click().run()
    assert any("Type a prompt first" in e.value for e in at.error)
    at.text_area(key="panorama.prompt").set_value("a watercolor of a lake at night with a white moon")
    at.button(key="panorama.generate").click().run()
    wait_for_job(at, "panorama")
    [item] = at.session_state["panorama.results"]
    meta = json.loads((studio / f"{item}.json").read_text())
    assert meta["size"] == [128, 64] and meta["kind"] == "panorama"
    assert meta["recipe"]["request"]["window"] == 8  # the model's native latent size


def test_region_and_panorama_requests_from_settings() -> None:
    from PIL import Image

    from studio_ui.methods import RegionSettings, RegionSpec, panorama_request, region_request

    region_map = Image.new("RGB", (30, 20), "white")
    region_map.paste((229, 57, 53), (0, 0, 10, 20))
    specs = [RegionSpec("#e53935", "a red sun", "dark", 4), RegionSpec("#1e88e5", "absent colour")]
    settings = RegionSettings("a meadow", specs, negative_prompt="blurry", width=96, height=64, width_multiplier=3,
                              circular=True, window=8)
    request = region_request(settings, region_map)
    assert request.kind == "panorama" and (request.width, request.height) == (288, 64) and request.circular
    [region] = request.regions  # a colour that is not on the map is left out
    assert region.mask.size == (288, 64) and region.seed == 4 and region.negative_prompt == "blurry, dark"
    assert request.window == 8 and request.stride == 1
    settings.keep_colours, settings.shifted = True, True  # kept colours, fast windows, 360 degrees
    kept = region_request(settings, region_map)
    assert kept.kind == "stroke" and kept.windows == "shifted" and (kept.width, kept.height) == (288, 64)
    assert kept.circular and kept.panorama  # a panorama's painting blur: a square picture's of its height
    settings.circular = False
    assert not region_request(settings, region_map).circular
    settings.width_multiplier, settings.keep_colours = 1, False
    assert region_request(settings, region_map).kind == "regions"
    with pytest.raises(StudioError, match="Type a prompt first"):
        panorama_request(RegionSettings("", [], width=128, height=64), None)


# --- the shared queue ------------------------------------------------------------------------------

class Event:
    def __init__(self, step: int, total: int) -> None:
        self.stage, self.step, self.total = "denoise", step, total

    def preview(self):
        return None


def steps_work(n: int, result: str, gate: threading.Event | None = None, fail: Exception | None = None):
    def work(progress):
        if gate is not None:
            gate.wait(5)
        for i in range(n):
            if progress(Event(i + 1, n)):
                from core.errors import CancelledError
                raise CancelledError("cancelled")
            time.sleep(0.01)
        if fail is not None:
            raise fail
        return result
    return work


def test_queue_runs_one_at_a_time_in_order_and_reports_places() -> None:
    queue, gate = JobQueue(), threading.Event()
    first = queue.submit("a", "first", steps_work(3, "one", gate))
    second = queue.submit("b", "second", steps_work(3, "two"))
    third = queue.submit("c", "third", steps_work(3, "three"))
    time.sleep(0.1)
    assert first.status == "running" and queue.position(second) == 1 and queue.position(third) == 2
    gate.set()
    for job in (first, second, third):
        queue.wait(job, 10)
    assert [j.result for j in (first, second, third)] == ["one", "two", "three"]
    assert first.finished <= second.started and second.finished <= third.started
    assert third.fraction == 1.0 and queue.pending() == 0


def test_failures_and_cancels_stay_in_their_session() -> None:
    queue, gate = JobQueue(), threading.Event()
    running = queue.submit("a", "cancel me while running", steps_work(200, "never", gate))
    broken = queue.submit("b", "fails", steps_work(2, "never", fail=RuntimeError("boom")))
    user_error = queue.submit("c", "user error", steps_work(1, "never", fail=StudioError("Choose a smaller size.")))
    oom = queue.submit("d", "out of memory", steps_work(1, "never", fail=RuntimeError("CUDA out of memory.")))
    waiting = queue.submit("e", "cancel me while waiting", steps_work(2, "never"))
    fine = queue.submit("f", "fine", steps_work(2, "ok"))
    queue.cancel(waiting.id)
    assert waiting.status == CANCELLED
    gate.set()
    time.sleep(0.05)
    queue.cancel(running.id)
    for job in (running, broken, user_error, oom, fine):
        queue.wait(job, 10)
    assert running.status == CANCELLED and running.step < 200
    assert broken.status == FAILED and "boom" in broken.error and "Traceback" not in broken.error
    assert user_error.error == "Choose a smaller size."
    assert oom.error == OOM_HELP and "low-memory" in oom.error
    assert fine.status == DONE and fine.result == "ok"


def test_a_newer_live_preview_replaces_the_older_one_of_its_session_and_page() -> None:
    queue, gate = JobQueue(), threading.Event()
    running = queue.submit("a", "preview 1", steps_work(500, "1", gate), page="scribble", live=True)
    time.sleep(0.05)
    queued = queue.submit("a", "preview 2", steps_work(2, "2"), page="scribble", live=True)
    other_page = queue.submit("a", "regions preview", steps_work(2, "r"), page="regions", live=True)
    other_session = queue.submit("b", "b's preview", steps_work(2, "b"), page="scribble", live=True)
    newest = queue.submit("a", "preview 3", steps_work(2, "3"), page="scribble", live=True)
    assert queued.status == CANCELLED  # dropped without running
    gate.set()
    for job in (running, other_page, other_session, newest):
        queue.wait(job, 10)
    assert running.status == CANCELLED and running.step < 500  # the running one stopped at its next step
    assert [j.result for j in (other_page, other_session, newest)] == ["r", "b", "3"]


def test_a_full_render_waits_for_at_most_the_one_running_preview() -> None:
    """The queue's rule: one session's live previews never delay another's full render by
    more than one preview, however many previews that session sends while the render waits."""
    queue, gate = JobQueue(), threading.Event()
    first = queue.submit("a", "preview 0", steps_work(3, "p0", gate), page="scribble", live=True)
    time.sleep(0.05)
    render = queue.submit("b", "full render", steps_work(3, "full"), page="scribble")
    assert queue.position(render) == 1
    previews = [queue.submit("a", f"preview {i}", steps_work(3, f"p{i}"), page="scribble", live=True)
                for i in range(1, 6)]
    assert queue.position(render) == 1 and queue.position(previews[-1]) == 2
    gate.set()  # the newest preview cancelled the running one; the render still goes first
    for job in (render, *previews):
        queue.wait(job, 10)
    assert render.status == DONE and previews[-1].status == DONE
    assert render.finished <= previews[-1].started
    ran_before = [j for j in (first, *previews) if j.started is not None and j.started < render.started]
    assert len(ran_before) <= 1 and ran_before == [first]
    assert all(p.status == CANCELLED for p in previews[:-1])


def test_error_messages_say_how_to_fix() -> None:
    assert describe_error(MemoryError()) == OOM_HELP
    assert "Details are in the server log" in describe_error(KeyError("x"))


def test_two_sessions_share_the_engine_and_both_finish(studio: Path) -> None:
    sessions = [open_page("scribble", **{"scribble.steps": 3, "scribble.method": "SDEdit", "seed": s}) for s in (1, 2)]
    for at in sessions:
        draw(at, "scribble", DRAWING)
        at.text_area(key="scribble.prompt").set_value("a watercolor of a lake at night")
        at.button(key="scribble.generate").click().run()
    for at in sessions:
        wait_for_job(at, "scribble")
    seeds = [at.session_state["scribble.results"] for at in sessions]
    assert all(len(s) == 1 for s in seeds) and seeds[0] != seeds[1]


def test_pages_take_the_models_recommended_settings_until_the_person_changes_them(
        monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / "tuned")
    (models / "tuned" / "studio.json").write_text(json.dumps({"recommended": {"guidance_scale": 4.5, "steps": 12,
                                                                               "fidelity": 0.8}}))
    monkeypatch.setenv("STUDIO_MODELS_DIR", str(models))
    monkeypatch.setenv("STUDIO_OUTPUTS_DIR", str(tmp_path / "outputs"))
    at = open_page("scribble")
    assert (at.session_state["scribble.guidance"], at.session_state["scribble.steps"],
            at.session_state["scribble.fidelity"]) == (4.5, 12, 0.8)
    at.slider(key="scribble.steps").set_value(20).run()  # the person's choice wins from now on
    at.run()
    assert at.session_state["scribble.steps"] == 20 and at.session_state["scribble.guidance"] == 4.5
    at.switch_page(PAGES["regions"]).run()
    assert not at.exception, at.exception
    assert (at.session_state["regions.guidance"], at.session_state["regions.steps"]) == (4.5, 12)


def test_a_reloaded_page_picks_its_queued_job_back_up_and_then_its_result(studio: Path) -> None:
    from studio_ui.shared import JOB_PARAM, get_queue

    gate = threading.Event()
    blocker = get_queue().submit("someone else", "blocker", steps_work(1, "", gate))  # keeps ours queued
    try:
        at = open_page("scribble", **{"scribble.steps": 2, "scribble.method": "SDEdit", "seed": 5})
        draw(at, "scribble", DRAWING)
        at.text_area(key="scribble.prompt").set_value("a red sun over a green field").run()
        at.button(key="scribble.generate").click().run()
        job_id = at.session_state["scribble.job"]
        assert job_id and at.query_params[JOB_PARAM] == job_id and len(job_id) == 16

        reloaded = AppTest.from_file(APP, default_timeout=60)  # a new session with the same address
        reloaded.query_params[JOB_PARAM] = job_id
        reloaded.run()
        assert not reloaded.exception, reloaded.exception
        assert reloaded.session_state["scribble.job"] == job_id
        assert reloaded.text_area(key="scribble.prompt").value == "a red sun over a green field"
        assert reloaded.session_state["scribble.drawing"]["objects"] == DRAWING["objects"]
        assert reloaded.session_state["seed"] == 5
        assert any("Picked up your request" in i.value for i in reloaded.info)
        assert reloaded.button(key="scribble.generate").disabled  # its job is still waiting

        elsewhere = AppTest.from_file(APP, default_timeout=60)  # another page's address: not taken
        elsewhere.query_params[JOB_PARAM] = job_id
        elsewhere.run()
        elsewhere.switch_page(PAGES["regions"]).run()
        assert not elsewhere.exception and "regions.job" not in elsewhere.session_state
        guessed = AppTest.from_file(APP, default_timeout=60)
        guessed.query_params[JOB_PARAM] = "job-1-12345"
        guessed.run()
        assert not guessed.exception and "scribble.job" not in guessed.session_state
    finally:
        gate.set()
    get_queue().wait(blocker, 10)
    wait_for_job(reloaded, "scribble")
    results = reloaded.session_state["scribble.results"]
    assert len(results) == 1 and (studio / f"{results[0]}.png").is_file()
    assert get_queue().get(job_id).context is None  # done: the gallery item holds the state now

    later = AppTest.from_file(APP, default_timeout=60)  # reloaded again after it finished
    later.query_params[JOB_PARAM] = job_id
    later.run()
    assert not later.exception, later.exception
    assert later.session_state["scribble.results"] == results
    assert later.text_area(key="scribble.prompt").value == "a red sun over a green field"
    assert any("Done in" in s.value for s in later.success)


def test_finished_jobs_keep_their_page_state_only_while_it_may_be_needed() -> None:
    queue = JobQueue(keep_finished=10, keep_context=2)
    jobs = [queue.submit("s", f"job {i}", steps_work(1, "", fail=RuntimeError("x")), page="panorama",
                         context={"i": i}) for i in range(4)]
    ids = {job.id for job in jobs}
    assert len(ids) == 4 and all(len(i) == 16 for i in ids)  # random, not a counter
    for job in jobs:
        queue.wait(job, 10)
    queue.submit("s", "one more", steps_work(1, "")).cancel()
    assert [job.context for job in jobs] == [None, None, {"i": 2}, {"i": 3}]
    assert all(job.page == "panorama" for job in jobs)


def test_scribble_colours_can_carry_their_own_prompts(studio: Path) -> None:
    at = open_page("scribble", **{"scribble.steps": 3, "seed": 2, "scribble.method": "GradOP+ fast"})
    draw(at, "scribble", DRAWING)
    at.text_area(key="scribble.prompt").set_value("a watercolor painting of a field by day")
    at.toggle(key="scribble.name_regions").set_value(True).run()
    at.session_state["scribble.rows"] = {"#43a047": {"words": "", "prompt": "a green field"},
                                         "#e53935": {"words": "", "prompt": "a red sun"}}
    at.session_state["scribble.rows_rev"] = 1
    at.run()
    at.button(key="scribble.generate").click().run()
    wait_for_job(at, "scribble")
    assert not at.error, [e.value for e in at.error]
    (item_id,) = at.session_state["scribble.results"]
    recipe = json.loads((studio / f"{item_id}.json").read_text())["recipe"]
    assert sorted(r["prompt"] for r in recipe["request"]["regions"]) == ["a green field", "a red sun"]

    at.session_state["scribble.rows"] = {"#43a047": {"words": "field", "prompt": "a green field"}}
    at.session_state["scribble.rows_rev"] = 2
    at.run()
    assert any("not both" in w.value for w in at.warning)
    at.button(key="scribble.generate").click().run()
    assert any("do not combine" in e.value for e in at.error)  # one clear line, nothing queued


def test_a_wide_scribble_canvas_makes_a_scribble_guided_panorama(studio: Path) -> None:
    at = open_page("scribble", **{"scribble.steps": 3, "seed": 5, "scribble.method": "GradOP+ fast"})
    draw(at, "scribble", DRAWING)
    at.text_area(key="scribble.prompt").set_value("a watercolor painting of a field by day")
    at.slider(key="scribble.multiplier").set_value(3).run()
    assert any("192×64" in c.value for c in at.caption)
    at.toggle(key="scribble.shifted").set_value(True).run()  # in More settings, on wide canvases only
    at.toggle(key="scribble.circular").set_value(True).run()  # 360 degrees, likewise
    at.toggle(key="scribble.name_regions").set_value(True).run()
    at.session_state["scribble.rows"] = {"#e53935": {"words": "", "prompt": "a red sun"}}
    at.session_state["scribble.rows_rev"] = 1
    at.run()
    at.button(key="scribble.generate").click().run()
    wait_for_job(at, "scribble")
    assert not at.error, [e.value for e in at.error]
    (item_id,) = at.session_state["scribble.results"]
    meta = json.loads((studio / f"{item_id}.json").read_text())
    assert meta["size"] == [192, 64] and meta["recipe"]["request"]["panorama"] is True
    assert meta["recipe"]["request"]["windows"] == "shifted" and meta["ui"]["settings"]["shifted"] is True
    assert meta["recipe"]["request"]["circular"] is True and meta["ui"]["settings"]["circular"] is True
    assert [r["prompt"] for r in meta["recipe"]["request"]["regions"]] == ["a red sun"]
    assert meta["ui"]["settings"]["multiplier"] == 3

    at.session_state["scribble.rows"] = {"#e53935": {"words": "field", "prompt": ""}}  # words: one clear line
    at.session_state["scribble.rows_rev"] = 2
    at.run()
    at.button(key="scribble.generate").click().run()
    assert any("do not work on a panorama yet" in e.value for e in at.error)


def wait_for_live(at: AppTest, page: str, timeout: float = 60) -> None:
    end = time.time() + timeout
    while time.time() < end:
        at.run()
        assert not at.exception, at.exception
        if not at.session_state[f"{page}.live_job"]:
            return
        time.sleep(0.1)
    raise AssertionError(f"the {page} live preview did not finish in {timeout} s")


def test_live_mode_previews_each_change_of_the_drawing_on_the_fast_path(studio: Path) -> None:
    from studio_ui.methods import ScribbleSettings, live_scribble_settings

    live = live_scribble_settings(ScribbleSettings("p", method="GradOP+", steps=50, num_images=4), 6)
    assert (live.method, live.steps, live.num_images, live.region_attention) == ("GradOP+ fast", 6, 1, True)
    assert live_scribble_settings(ScribbleSettings("p", method="SDEdit")).method == "SDEdit"

    at = open_page("scribble", **{"scribble.steps": 30, "seed": 5, "scribble.live": True, "scribble.live_steps": 4})
    assert at.button(key="scribble.generate").label == "Render full quality"
    assert any("Type a prompt first" in c.value for c in at.caption)  # the panel says what is missing
    at.text_area(key="scribble.prompt").set_value("a red sun over a green field").run()
    draw(at, "scribble", DRAWING)
    first = at.session_state["scribble.live_job"]
    assert first
    wait_for_live(at, "scribble")
    assert Image.open(io.BytesIO(at.session_state["scribble.live_image"])).size == (64, 64)  # PNG bytes
    assert any("Live preview ·" in c.value for c in at.caption)
    assert not list(studio.glob("*.png"))  # previews are not saved to the gallery
    at.run()
    assert not at.session_state["scribble.live_job"]  # nothing changed: no new preview
    moved = json.loads(json.dumps(DRAWING))
    moved["objects"][0]["left"] += 8
    draw(at, "scribble", moved)
    assert at.session_state["scribble.live_job"] not in (None, first)
    wait_for_live(at, "scribble")

    at.button(key="scribble.generate").click().run()  # the full render keeps the chosen steps and method
    wait_for_job(at, "scribble")
    (item_id,) = at.session_state["scribble.results"]
    request = json.loads((studio / f"{item_id}.json").read_text())["recipe"]["request"]
    assert request["steps"] == 30 and request["method"] == "gradop+" and request["fast"] is False
    at.toggle(key="scribble.live").set_value(False).run()
    assert "scribble.live_image" not in at.session_state and at.button(key="scribble.generate").label == "Generate"


def test_live_mode_on_the_region_painter(studio: Path) -> None:
    at = open_page("regions", **{"regions.size": "Square", "regions.steps": 3, "regions.live": True,
                                 "regions.live_steps": 8})
    draw(at, "regions", DRAWING)
    at.session_state["regions.rows"] = {"#43a047": {"prompt": "a meadow", "negative": "", "seed": None},
                                        "#e53935": {"prompt": "a red sun", "negative": "", "seed": None}}
    at.session_state["regions.rows_rev"] = 1
    at.run()
    assert at.session_state["regions.live_job"]
    wait_for_live(at, "regions")
    assert at.session_state["regions.live_image"] is not None and not at.session_state["regions.live_note"]
    at.toggle(key="regions.keep_colours").set_value(True).run()  # GradOP+ fast under the regions
    wait_for_live(at, "regions")
    assert at.session_state["regions.live_image"] is not None and not at.session_state["regions.live_note"]


def test_region_painter_can_keep_the_painted_colours(studio: Path) -> None:
    at = open_page("regions", **{"regions.size": "Square", "regions.steps": 3})
    draw(at, "regions", DRAWING)
    at.session_state["regions.rows"] = {"#43a047": {"prompt": "a meadow", "negative": "", "seed": None},
                                        "#e53935": {"prompt": "a red sun", "negative": "", "seed": None}}
    at.session_state["regions.rows_rev"] = 1
    at.toggle(key="regions.keep_colours").set_value(True).run()
    at.slider(key="regions.fidelity").set_value(0.8).run()
    at.button(key="regions.generate").click().run()
    wait_for_job(at, "regions")
    assert not at.error, [e.value for e in at.error]
    [item] = at.session_state["regions.results"]
    meta = json.loads((studio / f"{item}.json").read_text())
    request = meta["recipe"]["request"]
    assert meta["recipe"]["kind"] == "stroke" and request["method"] == "gradop+" and request["fidelity"] == 0.8
    assert [r["prompt"] for r in request["regions"]] == ["a meadow", "a red sun"]
    assert meta["ui"]["settings"]["keep_colours"] is True

    at.slider(key="regions.multiplier").set_value(2).run()
    at.toggle(key="regions.circular").set_value(True).run()
    at.button(key="regions.generate").click().run()
    wait_for_job(at, "regions")
    assert not at.error, [e.value for e in at.error]
    [item] = at.session_state["regions.results"]
    request = json.loads((studio / f"{item}.json").read_text())["recipe"]["request"]
    assert request["method"] == "gradop+" and request["circular"] is True and len(request["regions"]) == 2


@pytest.mark.parametrize("page, bad", [
    ("regions", {"multiplier": 99, "mode": "evil", "steps": "abc", "tool": "laser", "fidelity": float("nan")}),
    ("scribble", {"method": "magic", "variations": 0, "guidance": True, "size": "Huge", "brush": 500,
                  "multiplier": 9}),
    ("panorama", {"preset": "8:1", "width": 10**6, "shifted": "yes", "variations": 2.5}),
])
def test_settings_a_widget_would_refuse_are_reset_with_one_message(studio: Path, page: str, bad: dict) -> None:
    at = open_page("gallery")
    for name, value in bad.items():  # as "Open in editor" restores a hand-edited or foreign sidecar
        at.session_state[f"{page}.{name}"] = value
    at.switch_page(PAGES[page]).run()
    assert not at.exception, at.exception
    warning = " ".join(w.value for w in at.warning)
    assert "back to their defaults" in warning and all(name in warning for name in bad)


def test_results_upscale_into_new_gallery_entries_on_a_page_and_in_the_gallery(studio: Path) -> None:
    from core.recipe import read_recipe, request_from_recipe

    at = open_page("scribble", **{"scribble.steps": 2, "seed": 3})
    at.text_area(key="scribble.prompt").set_value("a red sun over purple mountains").run()
    at.button(key="scribble.generate").click().run()
    wait_for_job(at, "scribble")
    (source,) = at.session_state["scribble.results"]
    key = f"scribble.up.{source}"
    assert at.selectbox(key=f"{key}.upscaler").options[-2:] == ["Bicubic (no network)", "Lanczos (no network)"]
    at.session_state[f"{key}.scale"] = 2
    at.button(key=f"{key}.go").click().run()
    wait_for_job(at, "scribble")
    assert not at.error, [e.value for e in at.error]
    (big,) = at.session_state["scribble.results"]  # the new entry is the page's result now
    meta = json.loads((studio / f"{big}.json").read_text())
    assert meta["page"] == "upscale" and meta["kind"] == "upscale" and meta["size"] == [128, 128]
    assert meta["ui"]["upscale"]["source"] == source and meta["ui"]["page"] == "scribble"
    recipe = read_recipe(studio / f"{big}.png")
    rebuilt = request_from_recipe(recipe)
    assert rebuilt.image.size == (64, 64) and rebuilt.refine == 0 and rebuilt.scale == 2

    at.switch_page(PAGES["gallery"]).run()
    at.pills(key="gallery.filter").set_value(["upscale"]).run()
    assert any("1 of 2 images" in c.value for c in at.caption)
    at.button(key=f"gallery.view.{big}").click().run()
    assert at.button(key="gallery.source").label == f"Made from {source}"
    key = f"gallery.up.{big}"
    at.session_state[f"{key}.upscaler"] = "lanczos"
    at.session_state[f"{key}.refine"] = 0.5
    at.button(key=f"{key}.go").click().run()
    wait_for_job(at, "gallery")
    assert not at.error and not at.exception, [e.value for e in at.error]
    biggest = at.session_state["gallery.selected"]
    assert biggest not in (source, big)
    meta = json.loads((studio / f"{biggest}.json").read_text())
    assert meta["size"] == [256, 256] and meta["ui"]["upscale"]["source"] == big
    redraw = request_from_recipe(read_recipe(studio / f"{biggest}.png"))
    assert (redraw.prompt, redraw.refine, redraw.steps, redraw.upscaler) == ("a red sun over purple mountains",
                                                                              0.5, 2, "lanczos")
    at.button(key="gallery.open").click().run()  # the upscaled image reopens the drawing it came from
    assert not at.exception and at.title[0].value == "Scribble to Art"


def test_an_edited_or_foreign_sidecar_restores_only_what_the_page_can_hold(studio: Path) -> None:
    at = open_page("scribble", **{"scribble.steps": 2, "seed": 4})
    at.text_area(key="scribble.prompt").set_value("a boat on a lake").run()
    at.button(key="scribble.generate").click().run()
    wait_for_job(at, "scribble")
    (item,) = at.session_state["scribble.results"]
    sidecar = studio / f"{item}.json"
    meta = json.loads(sidecar.read_text())
    meta["ui"].update(
        settings={"job": "job-x", "results": ["../../etc"], "prompt": {"x": 1}, "steps": 3, "mount": 9},
        seed="abc", canvas={"dims": "wide", "drawing": {"objects": "x"}, "background_png": "!!not base64",
                            "raster_png": "AAAA"},
        rows={"not a colour": {"words": "x"}, "#ff0000": "words", "#00ff00": {"words": "tree", "bad": {"a": 1}}},
        images={"map_png": "AAAA", "evil": "x"})
    meta.update(created_ts="yesterday", size=5, model="m", seed="s", title=["t"], parameters={"p": 1})
    sidecar.write_text(json.dumps(meta))
    at.switch_page(PAGES["gallery"]).run()
    at.button(key=f"gallery.view.{item}").click().run()
    at.button(key="gallery.open").click().run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Scribble to Art"
    state = at.session_state
    assert state["scribble.steps"] == 3 and state["seed"] == 4 and state["scribble.prompt"] == "a boat on a lake"
    assert "scribble.evil" not in state and state["scribble.job"] is None
    assert state["scribble.rows"] == {"#00ff00": {"words": "tree"}}
    assert state["scribble.drawing"]["objects"] == [] and state["scribble.bg"] is None


def test_the_sidebar_loads_a_typed_or_recommended_lora_and_pages_use_the_recommended_scheduler(
        studio: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from core.model_settings import read_recommended

    at = open_page("scribble")
    at.session_state["sb.lora"] = str(tmp_path / "missing.safetensors")
    at.run()
    assert not at.exception, at.exception
    assert at.session_state["_load_options"].lora.endswith("missing.safetensors")
    assert any("missing.safetensors" in e.value for e in at.sidebar.error)  # one line, no traceback

    from studio_ui.methods import ScribbleSettings, scribble_request
    assert scribble_request(ScribbleSettings("p", scheduler="lcm", steps=4), None).scheduler == "lcm"
    assert scribble_request(ScribbleSettings("p"), None).scheduler == "default"
    assert read_recommended(tiny_model_dir).scheduler is None


def _reference_png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_prompts_on_the_scribble_page_and_per_region(studio: Path) -> None:
    """An image prompt for the whole picture (Scribble) and one for a region (Region Painter)
    reach the recipe; the bundled small CLIP guides (offline)."""
    at = open_page("scribble", **{"scribble.steps": 3, "seed": 4, "scribble.ip_png": _reference_png((30, 60, 200))})
    draw(at, "scribble", DRAWING)
    at.text_area(key="scribble.prompt").set_value("a painting")
    assert any(e.label == "Image prompt" for e in at.get("expander"))
    at.slider(key="scribble.ip_weight").set_value(1.5)
    at.button(key="scribble.generate").click().run()
    wait_for_job(at, "scribble")
    assert not at.error, [e.value for e in at.error]
    [item] = at.session_state["scribble.results"]
    guidance = json.loads((studio / f"{item}.json").read_text())["recipe"]["request"]["image_guidance"]
    assert guidance["prompts"][0]["weight"] == 1.5 and guidance["clip_model"] == "studio-clip"

    at = open_page("regions", **{"regions.size": "Square", "regions.steps": 2,
                                 "regions.ip_regions": {"#e53935": _reference_png((250, 200, 40))}})
    draw(at, "regions", DRAWING)
    at.session_state["regions.rows"] = {"#43a047": {"prompt": "a meadow", "negative": "", "seed": None},
                                        "#e53935": {"prompt": "", "negative": "", "seed": None}}
    at.session_state["regions.rows_rev"] = 1
    at.text_area(key="regions.background").set_value("a field").run()
    at.button(key="regions.generate").click().run()
    wait_for_job(at, "regions")
    assert not at.error, [e.value for e in at.error]
    [item] = at.session_state["regions.results"]
    regions = json.loads((studio / f"{item}.json").read_text())["recipe"]["request"]["regions"]
    described = [r for r in regions if r["image_prompt"] is not None]
    assert [r["name"] for r in described] == ["#e53935"] and described[0]["prompt"] == ""

    # Open in editor brings the references and the expander's settings back
    at.session_state["regions.ip_regions"] = {}
    at.session_state["regions.ip_method"] = "IP-Adapter"
    at.switch_page(PAGES["gallery"]).run()
    at.button(key=f"gallery.view.{item}").click().run()
    at.button(key="gallery.open").click().run()
    assert not at.exception, at.exception
    assert at.session_state["regions.ip_regions"] == {"#e53935": _reference_png((250, 200, 40))}
    assert at.session_state["regions.ip_method"] == "CLIP guidance"
