"""`streamlit` with the time the process spends in garbage collection written to a file.

    STUDIO_GC_STATS=/tmp/gc.json python -m bench.gc_server run app.py --server.port 8600 ...

The arguments are those of the ``streamlit`` command. Before Streamlit starts, a
``gc.callbacks`` hook adds up the seconds between each collection's 'start' and 'stop'
(all threads: a script run's ``gc.collect(2)`` and the automatic collections alike) and
counts the collections of each generation. A daemon thread rewrites the JSON file named by
``STUDIO_GC_STATS`` every second (atomically, so a reader never sees half a file), and once
more at exit: seconds in GC, collections per generation, the process's CPU seconds, its
resident memory now and its peak (``ru_maxrss``). Used by bench/bench_server.py.
"""
from __future__ import annotations

import atexit
import gc
import json
import os
import resource
import sys
import threading
import time

_lock = threading.Lock()
_stats = {"gc_seconds": 0.0, "collections": [0, 0, 0], "gen2_seconds": 0.0, "longest_s": 0.0}
_started: list[float] = []  # the start time of the collection in progress (collections do not nest)


def _on_gc(phase: str, info: dict) -> None:
    if phase == "start":
        _started[:] = [time.perf_counter()]
        return
    if not _started:
        return
    seconds = time.perf_counter() - _started.pop()
    generation = int(info.get("generation", 0))
    _stats["gc_seconds"] += seconds
    _stats["collections"][generation] += 1
    if generation == 2:
        _stats["gen2_seconds"] += seconds
    _stats["longest_s"] = max(_stats["longest_s"], seconds)


def rss_mb() -> float:
    """Resident memory now (VmRSS), in MB."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:  # not Linux
        return float("nan")


def snapshot() -> dict:
    times = os.times()
    return {**_stats, "collections": list(_stats["collections"]), "gen2": _stats["collections"][2],
            "cpu_seconds": round(times.user + times.system, 3), "rss_mb": round(rss_mb(), 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # KiB on Linux
            "pid": os.getpid(), "time": time.time()}


def write(path: str) -> None:
    with _lock:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as out:
            json.dump(snapshot(), out)
        os.replace(tmp, path)


def _writer(path: str) -> None:
    while True:
        try:
            write(path)
        except Exception:  # noqa: BLE001 - the stats must never take the server down
            pass
        time.sleep(1.0)


def main() -> None:
    path = os.environ.get("STUDIO_GC_STATS")
    gc.callbacks.append(_on_gc)
    if path:
        threading.Thread(target=_writer, args=(path,), name="gc-stats", daemon=True).start()
        atexit.register(write, path)
    from streamlit.web import cli

    sys.argv = ["streamlit", *sys.argv[1:]]
    cli.main()


if __name__ == "__main__":
    main()
