"""The real server under several sessions at once: seconds to a result and time in GC,
with Streamlit's `gc.collect(2)` after every script run (before) and without it (after).

    python -m bench.bench_server [--sessions 4 8] [--steps 5] [--serial 20] [--timeout 240] [--threads 1]

(``--threads 1`` when another CPU-heavy process shares the cores: torch's default of one
thread per core then oversubscribes them and a job takes several times longer.)

For each setting of ``runner.postScriptGC`` (``true`` on the command line: the old default;
then the value of .streamlit/config.toml) it starts `streamlit run app.py` on 127.0.0.1
through bench/gc_server.py (which times every garbage collection in the server process),
with the bundled demo model and a fresh outputs folder. Then, for each N of ``--sessions``,
N headless Chromium pages (one browser, N contexts) open the Panorama page, type a prompt,
keep the 2:1 shape (512x256 with the 256 px demo model) and set ``--steps`` steps; Generate
is pressed in all of them as close together as possible, and each page is watched until
its result shows: seconds until its job started (the progress panel leaves "Waiting in the
queue") and until its result, for each session, and the server's seconds in GC, gen-2
collections, CPU seconds and peak RSS during the round. A session with no result after
``--timeout`` seconds is recorded as "no result". Last, one session generates ``--serial``
times in a row and the server's resident memory is recorded after each (it must not grow
without bound once collections after each run are off).

Writes bench/results/server.{json,md}; the servers' logs go to bench/results/server-*.log.tmp.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

from bench.common import RESULTS, write_results
from tests.test_browser import (CHROMIUM, CHROMIUM_ARGS, VIEWPORT, free_port, open_app, open_expander, set_slider,
                                type_into, visible, wait_idle, wait_until_healthy)

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "pretrained_models"
PAGE = "panorama"
PROMPT = "a watercolor painting of green hills under a blue sky by day"
GENERATE = f".st-key-{PAGE}-generate button"
# One look at a page: its result, whether its job has left the queue, an error, the job's own seconds.
STATE_JS = """() => {
    const text = document.body.innerText;
    const error = document.querySelector('[data-testid="stAlertContentError"]');
    const done = text.match(/Done in ([0-9.]+) s/);
    return {
        results: [...document.querySelectorAll('h1, h2, h3')].some(h => h.innerText.trim() === 'Results'),
        queued: text.includes('Waiting in the queue'),
        started: /Step \\d+ of \\d+|Starting…|Live preview/.test(text),
        error: error ? error.innerText : null,
        job_seconds: done ? parseFloat(done[1]) : null,
        cancelled: text.includes('Cancelled.'),
    };
}"""


def config_post_script_gc() -> bool:
    """What .streamlit/config.toml says (Streamlit's default is true)."""
    with open(ROOT / ".streamlit" / "config.toml", "rb") as handle:
        return bool(tomllib.load(handle).get("runner", {}).get("postScriptGC", True))


class Server:
    """`streamlit run app.py` through bench/gc_server.py; ``stats()`` reads its GC figures."""

    def __init__(self, post_script_gc: bool | None, outputs: Path, label: str, threads: int = 0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stats_path = Path(tempfile.mkdtemp(prefix="gcstats-")) / "gc.json"
        self.log_path = RESULTS / f"server-{label}.log.tmp"
        self.command = [sys.executable, "-m", "bench.gc_server", "run", "app.py", "--server.headless", "true",
                        "--server.port", str(self.port), "--server.address", "127.0.0.1",
                        "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"]
        if post_script_gc is not None:
            self.command += ["--runner.postScriptGC", "true" if post_script_gc else "false"]
        env = {**os.environ, "STUDIO_MODELS_DIR": str(MODELS), "STUDIO_OUTPUTS_DIR": str(outputs),
               "STUDIO_GC_STATS": str(self.stats_path), "PYTHONUNBUFFERED": "1"}
        if threads:  # torch's intra-op threads (its default: one per core)
            env["OMP_NUM_THREADS"] = str(threads)
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(self.command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_until_healthy(self.url, self.process, self.log_path, timeout=90)
        except RuntimeError:
            self.close()
            raise

    def stats(self) -> dict[str, Any]:
        """The latest figures (rewritten every second by the server; wait for a fresh one)."""
        deadline = time.time() + 5
        last: dict[str, Any] = {}
        while time.time() < deadline:
            try:
                last = json.loads(self.stats_path.read_text())
            except (OSError, ValueError):
                pass
            if last and time.time() - last["time"] < 1.5:
                break
            time.sleep(0.2)
        return last

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()


def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {"gc_s": round(after["gc_seconds"] - before["gc_seconds"], 2),
            "gen2": after["gen2"] - before["gen2"],
            "gen2_s": round(after["gen2_seconds"] - before["gen2_seconds"], 2),
            "cpu_s": round(after["cpu_seconds"] - before["cpu_seconds"], 1),
            "peak_rss_mb": after["peak_rss_mb"], "rss_mb": after["rss_mb"]}


def prepare(browser, url: str, steps: int):
    """A new session on the Panorama page with the prompt typed and ``steps`` steps set."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(60_000)
    open_app(page, url, PAGE)
    type_into(page, "Prompt", PROMPT)
    open_expander(page, "Steps and guidance")
    set_slider(page, f"{PAGE}-steps", steps - 1)
    visible(page, GENERATE).wait_for()
    return context, page


def look(page) -> dict[str, Any]:
    try:
        return page.evaluate(STATE_JS)
    except PlaywrightError as exc:  # a page busy re-rendering: look again next time
        return {"results": False, "queued": False, "started": False, "error": None, "job_seconds": None,
                "cancelled": False, "look_failed": str(exc)[:200]}


def cancel_all(pages: list, wait: float = 60.0) -> int:
    """Press Cancel on the pages whose job is still queued or running, so that the next round
    starts on an idle server; wait (at most ``wait`` seconds) for them to say so. Returns how
    many did not within that time."""
    pending = []
    for page in pages:
        try:
            visible(page, f".st-key-{PAGE}-cancel button").click(timeout=10_000)
            pending.append(page)
        except PlaywrightError as exc:
            print(f"  could not press Cancel: {str(exc).splitlines()[0]}", flush=True)
    deadline = time.perf_counter() + wait
    while pending and time.perf_counter() < deadline:
        pending = [page for page in pending if not (look(page)["cancelled"] or look(page)["results"])]
        time.sleep(0.5)
    return len(pending)


def crowd(browser, server: Server, sessions: int, steps: int, timeout: float) -> dict[str, Any]:
    """N sessions press Generate together; seconds to each one's start and result."""
    pages = [prepare(browser, server.url, steps) for _ in range(sessions)]
    try:
        buttons = [visible(page, GENERATE).element_handle() for _, page in pages]
        time.sleep(1.5)  # the servers' stats file is rewritten every second
        before = server.stats()
        t0 = time.perf_counter()
        clicked = []
        for button in buttons:  # a click in the page itself: no waiting between the sessions
            button.evaluate("b => b.click()")
            clicked.append(time.perf_counter() - t0)
        started: list[float | None] = [None] * sessions
        finished: list[float | None] = [None] * sessions
        job_seconds: list[float | None] = [None] * sessions
        errors: list[str | None] = [None] * sessions
        deadline = t0 + timeout
        while time.perf_counter() < deadline and any(f is None and e is None for f, e in zip(finished, errors)):
            for i, (_, page) in enumerate(pages):
                if finished[i] is not None or errors[i] is not None:
                    continue
                state = look(page)
                now = time.perf_counter() - t0
                if started[i] is None and (state["started"] or state["results"]) and not state["queued"]:
                    started[i] = now
                if state["results"]:
                    finished[i], job_seconds[i] = now, state["job_seconds"]
                elif state["error"]:
                    errors[i] = state["error"][:300]
            time.sleep(0.2)
        after = server.stats()
        wall = time.perf_counter() - t0
        not_cancelled = cancel_all([page for (_, page), f in zip(pages, finished) if f is None])
    finally:
        for context, _ in pages:
            context.close()
    return {"sessions": sessions, "steps": steps, "timeout_s": timeout, "wall_s": round(wall, 1),
            "clicked_s": [round(c, 3) for c in clicked],
            "started_s": [None if s is None else round(s, 1) for s in started],
            "result_s": [None if f is None else round(f, 1) for f in finished],
            "job_seconds": job_seconds, "errors": errors,
            "no_result": sum(f is None for f in finished), "not_cancelled_in_60s": not_cancelled,
            **delta(before, after)}


def saved(outputs: Path) -> int:
    """Images in the gallery folder (one sidecar each)."""
    return len(list(outputs.glob("*.json")))


def serial(browser, server: Server, outputs: Path, count: int, steps: int, timeout: float) -> dict[str, Any]:
    """One session generates ``count`` times in a row; the server's memory after each."""
    already = saved(outputs)
    context, page = prepare(browser, server.url, steps)
    rss, seconds = [], []
    start_stats = server.stats()
    try:
        for k in range(1, count + 1):
            t0 = time.perf_counter()
            visible(page, GENERATE).click()
            deadline = t0 + timeout
            while saved(outputs) - already < k and time.perf_counter() < deadline:
                state = look(page)
                if state["error"]:
                    raise RuntimeError(f"generation {k} failed: {state['error']}")
                time.sleep(0.2)
            if saved(outputs) - already < k:
                break
            seconds.append(round(time.perf_counter() - t0, 1))
            page.wait_for_function(f"() => document.querySelector('{GENERATE}')?.innerText.includes('Generate')"
                                   f" && !document.querySelector('{GENERATE}').disabled", timeout=60_000)
            wait_idle(page)
            rss.append(server.stats()["rss_mb"])
        end_stats = server.stats()
    finally:
        context.close()
    return {"count": count, "done": len(seconds), "steps": steps, "seconds": seconds, "rss_after_each_mb": rss,
            **delta(start_stats, end_stats)}


def run_setting(browser, post_script_gc: bool | None, label: str, args, serial_count: int) -> dict[str, Any]:
    outputs = Path(tempfile.mkdtemp(prefix=f"bench-server-{label}-"))
    server = Server(post_script_gc, outputs, label, args.threads)
    try:
        context, _ = prepare(browser, server.url, args.steps)  # loads the model (shared by all sessions)
        context.close()
        loaded = server.stats()
        rounds = []
        for n in args.sessions:
            print(f"[{label}] {n} sessions…", flush=True)
            rounds.append(crowd(browser, server, n, args.steps, args.timeout))
            print(f"[{label}]   results at {rounds[-1]['result_s']} s; GC {rounds[-1]['gc_s']} s in "
                  f"{rounds[-1]['gen2']} gen-2 collections", flush=True)
        one = None
        if serial_count:
            print(f"[{label}] {serial_count} generations in one session…", flush=True)
            one = serial(browser, server, outputs, serial_count, args.steps, args.timeout)
            print(f"[{label}]   {one['done']} done; RSS after each {one['rss_after_each_mb']} MB", flush=True)
    finally:
        server.close()
    log = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
    problems = [line for line in log.splitlines() if re.search(r"Traceback|Error|Exception", line)]
    return {"label": label, "post_script_gc": post_script_gc if post_script_gc is not None else config_post_script_gc(),
            "from": "command line" if post_script_gc is not None else ".streamlit/config.toml",
            "command": shlex.join(["python", *server.command[1:]]), "model_loaded": loaded, "rounds": rounds,
            "serial": one, "log_problems": problems[:20]}


def fmt(value: float | None) -> str:
    return "no result" if value is None else f"{value:.1f}"


def table(data: dict[str, Any]) -> str:
    lines = [
        "| N | postScriptGC | each session: seconds from its click to its result (sorted) | max (s) | no result | "
        "server in GC (s) | gen-2 collections | server CPU (s) | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by_n: dict[int, list[tuple[dict, dict]]] = {}
    for setting in data["settings"]:
        for r in setting["rounds"]:
            by_n.setdefault(r["sessions"], []).append((setting, r))
    for n in sorted(by_n):
        for setting, r in by_n[n]:
            results = sorted(r["result_s"], key=lambda v: float("inf") if v is None else v)
            done = [v for v in results if v is not None]
            lines.append(f"| {n} | {str(setting['post_script_gc']).lower()} ({setting['label']}) | "
                         f"{', '.join(fmt(v) for v in results)} | {fmt(max(done)) if done else 'no result'} | "
                         f"{r['no_result']} | {r['gc_s']:.1f} | {r['gen2']} | {r['cpu_s']:.1f} | "
                         f"{r['peak_rss_mb']:.0f} |")
    lines += ["", "Seconds until each job left the queue (as the page showed it), in the order Generate was pressed:", ""]
    for n in sorted(by_n):
        for setting, r in by_n[n]:
            lines.append(f"- N={n}, {setting['label']}: started at {', '.join(fmt(v) for v in r['started_s'])}; "
                         f"the job's own seconds (the page's 'Done in'): "
                         f"{', '.join(fmt(v) for v in r['job_seconds'])}"
                         + (f"; {r['not_cancelled_in_60s']} job(s) not cancelled within 60 s after the round"
                            if r.get("not_cancelled_in_60s") else ""))
    lines += ["", "Generations in a row in one session (after the rounds above, same server):", "",
              "| postScriptGC | done | seconds each (median) | server GC (s) | gen-2 | RSS after 1st / 10th / last (MB) "
              "| peak RSS (MB) |", "|---|---|---|---|---|---|---|"]
    for setting in data["settings"]:
        s = setting["serial"]
        if not s:
            continue
        rss = s["rss_after_each_mb"]
        picks = [rss[i] for i in (0, min(9, len(rss) - 1), len(rss) - 1)] if rss else []
        median = sorted(s["seconds"])[len(s["seconds"]) // 2] if s["seconds"] else None
        lines.append(f"| {str(setting['post_script_gc']).lower()} ({setting['label']}) | {s['done']}/{s['count']} | "
                     f"{fmt(median)} | {s['gc_s']:.1f} | {s['gen2']} | {' / '.join(f'{v:.0f}' for v in picks)} | "
                     f"{s['peak_rss_mb']:.0f} |")
    threads = f"{data['threads']} torch thread(s) in the server" if data["threads"] else "torch's default threads"
    lines += ["", f"Panorama {data['size']} px, {data['steps']} steps, the bundled demo model, {threads}, "
              f"one Chromium with one context per session, on {data['machine']}; a session with no result after "
              f"{data['timeout_s']:.0f} s counts as 'no result' (its job is then cancelled).",
              "Server in GC: wall-clock seconds the server process spent in garbage collection (all generations, "
              "all threads; a collection holds the GIL, so nothing else in the server runs meanwhile) from the first "
              "click to the last result or the timeout; gen-2: full collections in that time; server CPU: the "
              "process's CPU seconds in that time; peak RSS: ru_maxrss of the server so far.", "",
              f"Command: `{data['command']}`", ""]
    for setting in data["settings"]:
        lines.append(f"- {setting['label']}: `{setting['command']}` (postScriptGC from {setting['from']})")
        for problem in setting["log_problems"]:
            lines.append(f"  - server log: `{problem[:200]}`")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[4, 8], help="sessions pressing Generate together")
    parser.add_argument("--steps", type=int, default=5, help="steps of each panorama (512x256)")
    parser.add_argument("--serial", type=int, default=20,
                        help="generations in a row in one session of the 'after' server (0: none)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds until a session counts as no result")
    parser.add_argument("--serial-before", type=int, default=0,
                        help="generations in a row in the 'before' server too (slow: default none)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of the server (OMP_NUM_THREADS; 0: torch's default, one per core)")
    parser.add_argument("--only", choices=["before", "after"], help="run one setting only")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set STUDIO_CHROMIUM)")
    settings = [("before", True), ("after", None)]
    if args.only:
        settings = [s for s in settings if s[0] == args.only]
    RESULTS.mkdir(exist_ok=True)
    started = time.time()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            results = [run_setting(browser, flag, label, args, args.serial if label == "after" else args.serial_before)
                       for label, flag in settings]
        finally:
            browser.close()
    data = {"command": "python -m bench.bench_server " + shlex.join(sys.argv[1:]), "sessions": args.sessions,
            "steps": args.steps, "size": "512x256", "serial": args.serial, "serial_before": args.serial_before,
            "timeout_s": args.timeout, "threads": args.threads,
            "config_post_script_gc": config_post_script_gc(), "bench_seconds": round(time.time() - started),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average "
                       f"{', '.join(f'{v:.1f}' for v in os.getloadavg())} at the end",
            "settings": results}
    text = table(data)
    write_results("server", data, text)
    print(text)


if __name__ == "__main__":
    main()
