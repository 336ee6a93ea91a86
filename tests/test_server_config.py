"""The server's settings for many sessions at once (issue #17).

Streamlit runs a full ``gc.collect(2)`` after every script run, fragments included, unless
``runner.postScriptGC`` is off; the progress panel reruns every 0.5 s in every session with
a job, so with it on the server spent most of its time collecting. The first tests check
that .streamlit/config.toml turns it off (as read by tomllib and by Streamlit itself); the
last one starts the real server and checks that one session's progress polling takes only
a small share of a core (the figures with several sessions are in bench/bench_server.py).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / ".streamlit" / "config.toml"


def test_config_turns_post_script_gc_off() -> None:
    with open(CONFIG, "rb") as handle:
        config = tomllib.load(handle)
    assert config.get("runner", {}).get("postScriptGC") is False


def test_streamlit_reads_post_script_gc_off_from_the_project_config(tmp_path: Path) -> None:
    """What `streamlit run app.py` from the repository root gets (a fresh process: the
    config is process-wide; a clean HOME, so no ~/.streamlit/config.toml gets in the way)."""
    code = ("from streamlit import config; config.get_config_options(force_reparse=True); "
            "print(config.get_option('runner.postScriptGC'), config.get_where_defined('runner.postScriptGC'))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "HOME": str(tmp_path)},
                         capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert out[0] == "False" and Path(out[1]) == CONFIG, out


# --- the real server: what one session's polling costs ---------------------------------------

def cpu_ticks(pid: int) -> tuple[int, dict[int, int]]:
    """utime + stime (clock ticks) of the process (its exited threads included) and of each live thread."""
    def ticks(stat: str) -> int:
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        return int(fields[11]) + int(fields[12])  # utime, stime

    total = ticks(Path(f"/proc/{pid}/stat").read_text())
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            threads[int(task.name)] = ticks((task / "stat").read_text())
        except (OSError, ValueError):  # the thread just ended
            pass
    return total, threads


def polling_share(pid: int, wait: Callable[[], None]) -> float:
    """Share of one core the server spent during ``wait()``, less the threads alive all along
    except the main one: the job's worker and torch's threads are such threads; each script
    run (fragments included) has a thread of its own that ends with it, and the main thread
    serves the web socket: those count."""
    total0, threads0 = cpu_ticks(pid)
    start = time.monotonic()
    wait()
    total1, threads1 = cpu_ticks(pid)
    elapsed = time.monotonic() - start
    lasting = (set(threads0) & set(threads1)) - {pid}
    job = sum(threads1[t] - threads0[t] for t in lasting)
    return (total1 - total0 - job) / os.sysconf("SC_CLK_TCK") / elapsed


@pytest.mark.browser
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread CPU times from /proc (Linux)")
def test_one_sessions_progress_polling_takes_a_small_share_of_a_core(tmp_path: Path) -> None:
    browser_test = pytest.importorskip("test_browser", reason="needs tests/test_browser.py's helpers")
    if not browser_test.CHROMIUM.exists():
        pytest.skip(f"no Chromium at {browser_test.CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    port = browser_test.free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**{k: v for k, v in os.environ.items() if k != "STREAMLIT_RUNNER_POST_SCRIPT_GC"},
           "STUDIO_MODELS_DIR": str(browser_test.MODELS), "STUDIO_OUTPUTS_DIR": str(tmp_path / "outputs")}
    if "STUDIO_TEST_POST_SCRIPT_GC" in os.environ:  # to see this test fail with the old default: =true
        env["STREAMLIT_RUNNER_POST_SCRIPT_GC"] = os.environ["STUDIO_TEST_POST_SCRIPT_GC"]
    with open(tmp_path / "streamlit.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port",
             str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        browser_test.wait_until_healthy(url, server, tmp_path / "streamlit.log")
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(browser_test.CHROMIUM),
                                                 args=browser_test.CHROMIUM_ARGS)
            page = browser.new_context(viewport=browser_test.VIEWPORT).new_page()
            page.set_default_timeout(60_000)
            frames: list[float] = []
            page.on("websocket", lambda ws: ws.on("framereceived", lambda _: frames.append(time.monotonic())))
            browser_test.open_app(page, url, "panorama")
            browser_test.type_into(page, "Prompt", "a watercolor painting of green hills under a blue sky")
            browser_test.open_expander(page, "Steps and guidance")
            thumb = page.locator(".st-key-panorama-steps input[type=range]").first
            thumb.focus()
            thumb.press("End")  # 100 steps: it runs all through the measurement
            browser_test.wait_idle(page)
            browser_test.visible(page, ".st-key-panorama-generate button").click()
            page.get_by_text(re.compile(r"Step \d+ of 100")).first.wait_for(timeout=120_000)
            page.wait_for_timeout(1_000)
            seen = len(frames)  # Playwright's events arrive while it waits (not in time.sleep)
            share = polling_share(server.pid, lambda: page.wait_for_timeout(5_000))
            updates = len(frames) - seen
            browser_test.visible(page, ".st-key-panorama-cancel button").click()
            page.get_by_text("Cancelled.").wait_for(timeout=60_000)
            browser.close()
    finally:
        browser_test.stop(server)
    print(f"one session polling: {share:.1%} of a core, {updates} web socket messages in 5 s")
    assert updates >= 3, f"the progress panel did not poll ({updates} web socket messages in 5 s)"
    assert share < 0.25, f"one session's progress polling took {share:.0%} of a core"
