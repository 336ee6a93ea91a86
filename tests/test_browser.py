"""End to end in a real browser: `streamlit run app.py` on localhost, headless Chromium
driven by Playwright. Draws strokes on the real canvas with the mouse, types prompts,
generates, opens the gallery and reopens the recipe in the editor; the
same for a painted region map, and a panorama laid out by an uploaded map. The server runs
the bundled demo model (the app's default), so the screenshots show what a user gets.

Screenshots go to ``test-artifacts/`` (and to ``docs/screenshots/`` with
``UPDATE_SCREENSHOTS=1``). Runs when Chromium is installed (``apt-get install chromium``;
``.ci/run`` does it), skipped otherwise. ``STUDIO_CHROMIUM`` overrides the browser path.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("STUDIO_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOTS = ROOT / "docs" / "screenshots"
VIEWPORT = {"width": 1440, "height": 1000}
PROMPT_COLUMN = 32 + 88 + 70  # x of the middle of the 'Prompt' column in the region tables
GREEN, RED, BLUE = (67, 160, 71), (229, 57, 53), (30, 136, 229)
MODELS = ROOT / "pretrained_models"  # the bundled demo model (256 px native)
NATIVE = 256

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}: install it with "
                       "`apt-get install chromium` (the CI does) or set STUDIO_CHROMIUM"),
]
playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")


# --- the server and the browser ---------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(url: str, process: subprocess.Popen, log_path: Path, timeout: float = 60) -> None:
    """Block until the Streamlit server at ``url`` answers its health check (or fail with its log)."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"streamlit did not start; see {log_path}")
            time.sleep(0.3)


def stop(process: subprocess.Popen, grace: float = 10) -> None:
    """Terminate a server, killing it if it does not stop within ``grace`` seconds."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def server():
    """`streamlit run app.py` with the bundled models; yields (url, outputs folder)."""
    ARTIFACTS.mkdir(exist_ok=True)
    outputs = ARTIFACTS / "outputs"  # inside the studio's folder: the gallery shows `test-artifacts/outputs/`
    shutil.rmtree(outputs, ignore_errors=True)
    outputs.mkdir()
    port = free_port()
    env = {**os.environ, "STUDIO_MODELS_DIR": str(MODELS), "STUDIO_OUTPUTS_DIR": str(outputs),
           "PYTHONUNBUFFERED": "1"}
    log = open(ARTIFACTS / "streamlit.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process, ARTIFACTS / "streamlit.log")
        yield url, outputs
    finally:
        stop(process)
        log.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    try:  # the last state of every test, to look at when one fails
        page.screenshot(path=str(ARTIFACTS / f"last-{request.node.name}.png"), full_page=True)
    finally:
        context.close()


# --- helpers ----------------------------------------------------------------------------------------

def shot(page, name: str) -> None:
    """A screenshot of the whole page (the viewport grows to the content's height, since
    Streamlit scrolls inside its main container) as a test artifact, and as a README
    screenshot with UPDATE_SCREENSHOTS=1."""
    path = ARTIFACTS / f"{name}.png"
    page.mouse.move(5, 5)  # no hover toolbar or tooltip in the picture
    height = page.evaluate("""() => {
        let tallest = document.body.scrollHeight;
        for (const el of document.querySelectorAll('[data-testid="stMain"], [data-testid="stAppViewContainer"]')) {
            el.scrollTo(0, 0);
            tallest = Math.max(tallest, el.scrollHeight);
        }
        return tallest;
    }""")
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": int(min(max(height, size["height"]), 2400))})
    time.sleep(0.6)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SCREENSHOTS / f"{name}.png")


def wait_idle(page, settle: float = 0.2) -> None:
    """Wait until Streamlit has no run in progress (its 'Running…' widget is gone)."""
    time.sleep(0.15)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)
    time.sleep(settle)


def visible(page, selector: str):
    return page.locator(selector).locator("visible=true").first


def open_app(page, url: str, path: str) -> None:
    """Open a page of the app and wait until app.py's navigation is there (on a fresh
    server the first visit reloads itself once: see studio_ui.shared.ensure_router)."""
    page.goto(f"{url}/{path}")
    page.get_by_role("link", name="Gallery", exact=True).wait_for(timeout=90_000)
    page.wait_for_selector("h1", timeout=60_000)
    wait_idle(page)


def pick(page, app_page: str, tool: str, colour: str) -> None:
    """Choose a drawing tool and a palette colour, and wait until the page shows both
    chosen (the canvas gets its new tool and colour in that same rerun)."""
    visible(page, f".st-key-{app_page}-tool [role=radio]:has-text('{tool}')").click()
    page.locator(f".st-key-{app_page}-tool [role=radio][aria-checked=true]:has-text('{tool}')").first.wait_for()
    visible(page, f".st-key-{app_page}_sw_{colour} button").click()
    page.wait_for_function(
        """([cls]) => [...document.querySelectorAll('.' + cls + ' button')]
                .some(b => getComputedStyle(b).boxShadow.includes('rgb'))""",
        arg=[f"st-key-{app_page}_sw_{colour}"], timeout=30_000)
    wait_idle(page, settle=0.4)


def drag(page, points: list[tuple[float, float]]) -> None:
    """Press, move through ``points`` (canvas pixels) and release on the drawing canvas."""
    canvas = page.locator("canvas.dc-canvas").first
    canvas.wait_for(state="visible")
    box = canvas.bounding_box()
    x0, y0 = box["x"], box["y"]
    page.mouse.move(x0 + points[0][0], y0 + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(x0 + x, y0 + y, steps=6)
    page.mouse.up()
    wait_idle(page)


def type_into(page, label: str, text: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(text)
    box.press("Control+Enter")  # commits a text area without leaving it
    wait_idle(page)


def set_slider(page, key: str, value_from_min: int) -> None:
    """Move a slider to its minimum plus ``value_from_min`` steps with the keyboard."""
    thumb = page.locator(f".st-key-{key} input[type=range]").first  # visually hidden, focusable
    thumb.focus()
    thumb.press("Home")
    for _ in range(value_from_min):
        thumb.press("ArrowRight")
    wait_idle(page)


def open_expander(page, title: str) -> None:
    page.get_by_text(title, exact=True).first.click()
    time.sleep(0.3)


def table_rows(page, table: str, rows: int) -> None:
    """Wait until the data editor ``table`` shows ``rows`` rows (it remounts when colours change)."""
    cells = page.locator(f"[class*='st-key-{table}'] [role=gridcell]")
    deadline = time.time() + 30
    while cells.count() < rows * 5 and time.time() < deadline:
        time.sleep(0.2)
    wait_idle(page)


def edit_cell(page, table: str, row: int, column_left: float, text: str) -> None:
    """Type ``text`` into a cell of a data editor (a canvas grid): double-click to open the
    cell's editor, fill it, Enter. Retried while the grid remounts (colours changed)."""
    cells = page.locator(f"[class*='st-key-{table}'] [role=gridcell]", has_text=text)
    editor = page.locator("textarea.gdg-input, input.gdg-input").first
    for _ in range(4):
        box = visible(page, f"[class*='st-key-{table}'] [data-testid='stDataFrameResizable']").bounding_box()
        if box is not None:
            page.mouse.dblclick(box["x"] + column_left, box["y"] + 35 * (row + 1) + 17)
            try:
                editor.wait_for(state="visible", timeout=5_000)
                editor.fill(text)
                editor.press("Enter")
            except playwright_api.TimeoutError:
                pass
            wait_idle(page, settle=0.5)
        if cells.count():
            return
    raise AssertionError(f"could not type {text!r} into {table}")


def generate_and_wait(page, app_page: str) -> None:
    """Click Generate and wait for the results (failing at once if an error shows instead)."""
    visible(page, f".st-key-{app_page}-generate button").click()
    results = page.get_by_role("heading", name="Results")
    error = page.locator("[data-testid='stAlertContentError']")
    deadline = time.time() + 300  # the demo model on a busy 2-core CPU
    while not results.count() and time.time() < deadline:
        if error.count():
            raise AssertionError(f"generation failed: {error.first.inner_text()}")
        time.sleep(0.25)
    results.wait_for(timeout=1_000)
    wait_idle(page)


def pixels(page, selector: str) -> np.ndarray:
    path = ARTIFACTS / "_element.png"
    page.locator(selector).first.screenshot(path=str(path))
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def share_of(image: np.ndarray, colour: tuple[int, int, int], tolerance: int = 30) -> float:
    return float((np.abs(image - np.array(colour)).max(-1) <= tolerance).mean())


def newest_sidecar(outputs: Path) -> dict:
    newest = max(outputs.glob("*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(newest.read_text())


# --- the stories ---------------------------------------------------------------------------------------

PROMPT = "a watercolor painting of a red sun over a green field under a blue sky by day"


def test_scribble_generate_gallery_and_reopen(page, server) -> None:
    url, outputs = server
    open_app(page, url, "")  # Scribble to Art is the default page (its URL is the root)
    page.locator("canvas.dc-canvas").first.wait_for()
    type_into(page, "Prompt", PROMPT)

    pick(page, "scribble", "Rect", "green")
    drag(page, [(20, 290), (430, 430)])  # the field
    pick(page, "scribble", "Circle", "red")
    drag(page, [(280, 80), (360, 80)])  # a sun
    pick(page, "scribble", "Brush", "blue")
    drag(page, [(40, 60), (120, 40), (200, 70), (260, 50)])  # sky strokes
    canvas = pixels(page, "canvas.dc-canvas")
    assert share_of(canvas, GREEN) > 0.15 and share_of(canvas, RED) > 0.02 and share_of(canvas, BLUE) > 0.005

    visible(page, ".st-key-scribble-method").click()
    page.get_by_role("option", name="GradOP+", exact=True).click()  # fast mode suits SD's VAE, not the demo's
    wait_idle(page)
    open_expander(page, "More settings")
    set_slider(page, "scribble-steps", 14)  # 15 steps
    generate_and_wait(page, "scribble")
    assert page.locator(".st-key-scribble-generate").get_by_text("Generate").count() == 1
    shot(page, "scribble")

    meta = newest_sidecar(outputs)
    assert meta["page"] == "scribble" and meta["kind"] == "stroke" and meta["recipe"]["request"]["method"] == "gradop+"
    drawing = meta["ui"]["canvas"]["drawing"]
    assert [o["type"].lower() for o in drawing["objects"]] == ["rect", "circle", "path"]
    check_json_renderer_matches_the_browser(meta)

    page.get_by_role("link", name="Gallery").click()
    page.get_by_role("heading", name="Gallery").wait_for()
    wait_idle(page)
    visible(page, "[class*='st-key-gallery-view'] button").click()
    wait_idle(page)
    shot(page, "gallery")
    visible(page, ".st-key-gallery-open button").click()
    page.get_by_text("Opened from the gallery").wait_for(timeout=30_000)
    wait_idle(page, settle=1.0)
    assert page.get_by_label("Prompt", exact=True).input_value() == PROMPT
    canvas = pixels(page, "canvas.dc-canvas")  # the drawing is back on the canvas
    assert share_of(canvas, GREEN) > 0.15 and share_of(canvas, RED) > 0.02
    shot(page, "scribble-reopened")


def test_a_wide_scribble_makes_a_panorama_in_the_browser(page, server) -> None:
    url, outputs = server
    open_app(page, url, "")
    page.locator("canvas.dc-canvas").first.wait_for()
    type_into(page, "Prompt", PROMPT)
    pick(page, "scribble", "Rect", "green")
    drag(page, [(20, 290), (430, 430)])
    pick(page, "scribble", "Circle", "red")
    drag(page, [(280, 80), (360, 80)])
    visible(page, ".st-key-scribble-method").click()
    page.get_by_role("option", name="GradOP+ fast", exact=True).click()
    wait_idle(page)
    set_slider(page, "scribble-multiplier", 2)  # x3
    page.get_by_text(f"Output: {3 * NATIVE}×{NATIVE} px", exact=False).wait_for()
    open_expander(page, "More settings")
    set_slider(page, "scribble-steps", 9)  # 10 steps
    generate_and_wait(page, "scribble")
    shot(page, "scribble-panorama")
    meta = newest_sidecar(outputs)
    assert meta["kind"] == "stroke" and meta["size"] == [3 * NATIVE, NATIVE]
    assert meta["recipe"]["request"]["panorama"] is True and meta["ui"]["settings"]["multiplier"] == 3


def check_json_renderer_matches_the_browser(meta: dict) -> None:
    """The app's fallback renderer of Fabric JSON agrees with the browser's own raster."""
    from studio_ui.canvas import compose, render_drawing, unb64

    canvas = meta["ui"]["canvas"]
    width, height = canvas["dims"]
    raster = np.asarray(Image.open(__import__("io").BytesIO(unb64(canvas["raster_png"]))).convert("RGBA"))
    browser = np.asarray(compose(raster, width, height)).astype(int)
    ours = np.asarray(render_drawing(canvas["drawing"], width, height)).astype(int)
    agree = (np.abs(browser - ours).max(-1) <= 40).mean()
    assert agree > 0.97, f"only {agree:.1%} of pixels agree"


def test_region_map_generate_gallery_and_reopen(page, server) -> None:
    url, outputs = server
    open_app(page, url, "regions")
    page.locator("canvas.dc-canvas").first.wait_for()
    type_into(page, "Background prompt", "a watercolor painting of a lake at night")
    pick(page, "regions", "Rect", "green")
    drag(page, [(10, 190), (440, 290)])  # lower half
    pick(page, "regions", "Circle", "red")
    drag(page, [(60, 70), (160, 70)])
    table_rows(page, "regions-table", 2)
    page.get_by_text("No prompt for").first.wait_for()
    edit_cell(page, "regions-table", 0, PROMPT_COLUMN, "a field of flowers")
    edit_cell(page, "regions-table", 1, PROMPT_COLUMN, "a red sun")
    wait_idle(page)
    assert page.get_by_text("No prompt for").count() == 0

    open_expander(page, "Steps and guidance")
    set_slider(page, "regions-steps", 9)  # 10 steps
    generate_and_wait(page, "regions")
    shot(page, "regions")
    meta = newest_sidecar(outputs)
    assert meta["page"] == "regions" and meta["kind"] == "regions"
    assert sorted(r["prompt"] for r in meta["recipe"]["request"]["regions"]) == ["a field of flowers", "a red sun"]

    page.get_by_role("link", name="Gallery").click()
    page.get_by_role("heading", name="Gallery").wait_for()
    wait_idle(page)
    visible(page, "[class*='st-key-gallery-view'] button").click()  # newest first: the regions image
    wait_idle(page)
    visible(page, ".st-key-gallery-open button").click()
    page.get_by_text("Opened from the gallery").wait_for(timeout=30_000)
    wait_idle(page, settle=1.0)
    assert page.get_by_role("heading", name="Region Painter").count() == 1
    assert page.get_by_label("Background prompt", exact=True).input_value() == "a watercolor painting of a lake at night"
    assert page.get_by_text("No prompt for").count() == 0  # the table's prompts are back
    canvas = pixels(page, "canvas.dc-canvas")
    assert share_of(canvas, GREEN) > 0.15 and share_of(canvas, RED) > 0.02


def test_panorama_with_an_uploaded_region_map(page, server, tmp_path: Path) -> None:
    url, outputs = server
    region_map = Image.new("RGB", (400, 100), "white")
    region_map.paste(BLUE, (0, 0, 400, 40))
    region_map.save(tmp_path / "map.png")
    open_app(page, url, "panorama")
    type_into(page, "Prompt", "a watercolor painting of a white moon over a lake at night")
    visible(page, ".st-key-panorama-use_map label").click()
    wait_idle(page)
    page.locator("input[type=file]").first.set_input_files(str(tmp_path / "map.png"))
    table_rows(page, "panorama-table", 1)
    page.get_by_text("No prompt for").first.wait_for()
    edit_cell(page, "panorama-table", 0, PROMPT_COLUMN, "a white moon")
    open_expander(page, "Steps and guidance")

    thumb = page.locator(".st-key-panorama-steps input[type=range]").first
    thumb.focus()
    thumb.press("End")  # 100 steps: a long one, to cancel while it runs
    wait_idle(page)
    visible(page, ".st-key-panorama-generate button").click()
    page.get_by_text("Work in progress").first.wait_for(timeout=60_000)
    shot(page, "panorama-progress")  # progress bar, live preview and Cancel
    visible(page, ".st-key-panorama-cancel button").click()
    page.get_by_text("Cancelled.").wait_for(timeout=60_000)
    wait_idle(page)
    assert not list(outputs.glob("*panorama*.png"))  # nothing saved

    set_slider(page, "panorama-steps", 9)  # 10 steps
    generate_and_wait(page, "panorama")
    shot(page, "panorama")
    meta = newest_sidecar(outputs)
    assert meta["page"] == "panorama" and meta["size"] == [2 * NATIVE, NATIVE]
    assert [r["prompt"] for r in meta["recipe"]["request"]["regions"]] == ["a white moon"]

    # Upscale the result x2 with the bundled network: a new gallery entry, shown as the result
    page.get_by_role("button", name="Upscale").first.click()
    visible(page, "[class*='st-key-panorama-up-'][class*='-go'] button").click()
    deadline = time.time() + 120
    while newest_sidecar(outputs)["page"] != "upscale" and time.time() < deadline:
        time.sleep(0.25)
    page.wait_for_function(f"() => [...document.images].some(i => i.naturalWidth === {4 * NATIVE})",
                           timeout=30_000)  # the page now shows the enlarged image as its result
    wait_idle(page, settle=1.0)
    shot(page, "upscaled")
    big = newest_sidecar(outputs)
    assert big["page"] == "upscale" and big["kind"] == "upscale" and big["size"] == [4 * NATIVE, 2 * NATIVE]
    assert big["ui"]["upscale"]["source"] == meta["id"]


def test_a_reloaded_page_picks_its_running_job_back_up(page, server) -> None:
    url, outputs = server
    before = set(outputs.glob("*.png"))
    open_app(page, url, "panorama")
    prompt = "a watercolor painting of purple mountains at sunset"
    type_into(page, "Prompt", prompt)
    open_expander(page, "Steps and guidance")
    thumb = page.locator(".st-key-panorama-steps input[type=range]").first
    thumb.focus()
    thumb.press("End")  # 100 steps: still running after the reload
    wait_idle(page)
    visible(page, ".st-key-panorama-generate button").click()
    page.get_by_text("Work in progress").first.wait_for(timeout=60_000)
    assert "job=" in page.url  # the address names the job

    page.reload()  # a new session: only the address is left
    page.get_by_text("Picked up your request").first.wait_for(timeout=60_000)
    page.get_by_text("Work in progress").first.wait_for(timeout=60_000)  # its progress again
    assert page.get_by_label("Prompt", exact=True).input_value() == prompt
    shot(page, "panorama-reloaded")
    visible(page, ".st-key-panorama-cancel button").click()
    page.get_by_text("Cancelled.").wait_for(timeout=60_000)
    wait_idle(page)
    assert set(outputs.glob("*.png")) == before  # nothing saved


def live_src(page) -> str | None:
    image = page.locator(".st-key-scribble-live-panel img")
    return image.first.get_attribute("src") if image.count() else None


def release_to_preview(page, points: list[tuple[float, float]], timeout: float = 60) -> float:
    """Draw a stroke and return the seconds from the mouse release to a new live preview."""
    before = live_src(page)
    canvas = page.locator("canvas.dc-canvas").first
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=6)
    page.mouse.up()
    released = time.perf_counter()
    page.wait_for_function(
        """([before]) => { const img = document.querySelector('.st-key-scribble-live-panel img');
                           return img && img.complete && img.naturalWidth > 0 && img.src !== before; }""",
        arg=[before], timeout=timeout * 1000, polling=20)
    return time.perf_counter() - released


def test_live_mode_updates_the_picture_after_each_stroke(page, server) -> None:
    """Live mode on Scribble to Art: each stroke brings a new preview without pressing
    anything. Reports the time from mouse release to the new preview (issue 15's target:
    at most 1.0 s at 256 px on a 2-core CPU); it does not assert times, a busy CI varies."""
    from studio_ui.methods import LIVE_STEPS

    url, outputs = server
    before = set(outputs.glob("*.png"))
    open_app(page, url, "")
    page.locator("canvas.dc-canvas").first.wait_for()
    type_into(page, "Prompt", PROMPT)
    visible(page, ".st-key-scribble-live label").click()
    page.wait_for_selector(".st-key-scribble-live-panel img", timeout=60_000)  # the prompt alone, first
    wait_idle(page)
    assert page.locator(".st-key-scribble-generate").get_by_text("Render full quality").count() == 1

    strokes = [("Rect", "green", [(20, 290), (430, 430)]), ("Circle", "red", [(280, 80), (360, 80)]),
               ("Brush", "blue", [(40, 60), (120, 40), (200, 70), (260, 50)]),
               ("Brush", "blue", [(300, 150), (380, 140), (430, 160)])]
    latencies = []
    for tool, colour, points in strokes:
        pick(page, "scribble", tool, colour)
        time.sleep(0.5)  # let any preview for the tool change settle (there is none: the drawing is the same)
        latencies.append(release_to_preview(page, points))
    wait_idle(page)
    shot(page, "scribble-live")
    report = {"strokes": len(latencies), "seconds": [round(s, 3) for s in latencies],
              "median": round(sorted(latencies)[len(latencies) // 2], 3), "size": NATIVE,
              "steps": LIVE_STEPS, "method": "GradOP+ fast"}
    (ARTIFACTS / "live-latency.json").write_text(json.dumps(report, indent=2))
    print(f"\nlive mode: mouse release -> new preview: {report['seconds']} s (median {report['median']} s)")
    assert len(latencies) == len(strokes)
    assert set(outputs.glob("*.png")) == before  # previews are not saved


def test_an_image_prompt_guides_a_scribble(page, server, tmp_path) -> None:
    """Upload a reference in the Image prompt expander; the result's recipe carries it."""
    from training import procedural as P
    from training.make_dataset import item_scene

    url, outputs = server
    scene, style, _ = item_scene(707, 3)  # a held-out night painting (bench_image_prompt's references)
    reference = tmp_path / "reference.png"
    Image.fromarray(P.render_painting(scene, 256, style)).save(reference)
    open_app(page, url, "")
    page.locator("canvas.dc-canvas").first.wait_for()
    type_into(page, "Prompt", "a painting of a lake")
    pick(page, "scribble", "Rect", "green")
    drag(page, [(20, 290), (430, 430)])
    open_expander(page, "More settings")
    set_slider(page, "scribble-steps", 9)  # 10 steps
    open_expander(page, "Image prompt")
    page.locator("[class*='st-key-scribble-ip_upload'] input[type=file]").set_input_files(str(reference))
    wait_idle(page, settle=1.0)
    assert visible(page, ".st-key-scribble-ip_remove button").is_visible()
    generate_and_wait(page, "scribble")
    shot(page, "scribble-image-prompt")
    guidance = newest_sidecar(outputs)["recipe"]["request"]["image_guidance"]
    assert guidance["method"] == "ip-adapter" and len(guidance["prompts"]) == 1  # the demo model's recommendation
    assert guidance["ip_adapter"] == "studio-ip-adapter"
