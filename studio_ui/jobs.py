"""One worker thread runs every session's requests, one at a time, in arrival order.

Live previews (``live=True``) follow two rules that keep them from getting in anyone's way:
a newer preview from the same session and page replaces the older one (queued: dropped;
running: cancelled at its next step), and full renders are served before any waiting
preview. So each session and page has at most one preview queued or running, and a full
render waits for at most one preview, the one already running when it arrives.

The app shares one :class:`JobQueue` across sessions (``st.cache_resource``). A page
submits a job and polls it: its place in the queue, steps done, a live preview, and the
result or a message. Cancel sets a flag that the engine's progress callback reads
(``True`` from the callback cancels). A failure or a cancel ends only that job: the
worker catches everything and moves on. No streamlit here, so it is unit-testable.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from core.errors import CancelledError, StudioError

log = logging.getLogger(__name__)

Work = Callable[[Callable[[Any], bool]], Any]  # work(progress_callback) -> result
OOM_HELP = ("Out of memory. Turn on the low-memory switches in the sidebar (attention slicing, VAE tiling, "
            "CPU offload), or choose a smaller size or fewer variations, then try again.")
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "error", "cancelled"


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    return name == "OutOfMemoryError" or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def describe_error(exc: BaseException) -> str:
    """A message a person can act on; never a traceback (that goes to the server log)."""
    if isinstance(exc, StudioError):
        return str(exc)
    if is_out_of_memory(exc):
        return OOM_HELP
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return (f"Something went wrong while generating ({type(exc).__name__}: {first}). Your drawing and settings "
            "are kept: try again, or change the model or settings in the sidebar. Details are in the server log.")


@dataclass
class Job:
    """One request's journey through the queue. Read by pages, written by the worker."""

    id: str
    session: str
    label: str
    work: Work = field(repr=False)
    page: str = ""  # the page that submitted it (a reloaded page looks for its own jobs)
    context: Any = field(default=None, repr=False)  # what the page needs to show it again after a reload
    status: str = QUEUED
    stage: str = ""
    step: int = 0
    total: int = 0
    preview: Any = field(default=None, repr=False)  # PIL image of the current estimate
    result: Any = field(default=None, repr=False)
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)
    finished_event: threading.Event = field(default_factory=threading.Event, repr=False)  # set once done
    preview_every: float = 0.3  # seconds between progress previews (each costs a small decode)
    live: bool = False  # a live-mode preview: replaced by the session's next one, served after full renders
    _last_preview: float = field(default=0.0, repr=False)

    @property
    def done(self) -> bool:
        return self.status in (DONE, FAILED, CANCELLED)

    @property
    def fraction(self) -> float:
        return min(self.step / self.total, 1.0) if self.total else 0.0

    def cancel(self) -> None:
        self.cancel_event.set()

    def progress(self, event: Any) -> bool:
        """The engine's progress callback: record the step and preview; True cancels."""
        self.stage = getattr(event, "stage", "") or ""
        self.step, self.total = int(getattr(event, "step", 0)), int(getattr(event, "total", 0))
        preview = getattr(event, "preview", None)
        now = time.monotonic()
        if callable(preview) and not self.live and (now - self._last_preview >= self.preview_every or self.step >= self.total):
            self._last_preview = now
            try:
                self.preview = preview()
            except Exception:  # a preview is a nicety: never let it fail the job
                log.debug("preview failed", exc_info=True)
        return self.cancel_event.is_set()


class JobQueue:
    """A FIFO of jobs served by one daemon worker thread (started on first submit)."""

    def __init__(self, keep_finished: int = 200, keep_context: int = 20) -> None:
        self._jobs: dict[str, Job] = {}
        self._waiting: list[str] = []  # ids of queued jobs, in order
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # notified when a job is queued
        self._thread: threading.Thread | None = None
        self._keep_finished, self._keep_context = keep_finished, keep_context
        self.current: Job | None = None

    def submit(self, session: str, label: str, work: Work, *, page: str = "", context: Any = None,
               live: bool = False) -> Job:
        """Queue ``work``. The id is random (a page puts it in its address, so it must not be
        guessable); ``context`` is kept until the job is done and for the newest
        ``keep_context`` finished jobs that have no result (failed or cancelled). A ``live``
        job replaces the same session and page's unfinished live job (see the module's rules)."""
        with self._lock:
            job = Job(id=uuid.uuid4().hex[:16], session=session, label=label, work=work, page=page,
                      context=context, live=live)
            if live:
                for old in self._jobs.values():
                    if old.live and not old.done and old.session == session and old.page == page:
                        self._drop(old)
            self._jobs[job.id] = job
            self._waiting.append(job.id)
            self._prune()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="studio-worker", daemon=True)
                self._thread.start()
            self._wake.notify()
        return job

    def get(self, job_id: str | None) -> Job | None:
        return self._jobs.get(job_id) if job_id else None

    def position(self, job: Job) -> int:
        """0 while running (or done); k: k jobs are ahead of this one (the running one included)."""
        with self._lock:
            order = self._order()
            if job.id not in order:
                return 0
            return order.index(job.id) + (1 if self.current is not None else 0)

    def _order(self) -> list[str]:
        """Waiting ids in the order they will run: full renders first, then live previews."""
        return sorted(self._waiting, key=lambda job_id: self._jobs[job_id].live)  # stable: arrival order within

    def pending(self) -> int:
        """Jobs waiting or running, all sessions."""
        with self._lock:
            return len(self._waiting) + (1 if self.current is not None else 0)

    def cancel(self, job_id: str) -> None:
        job = self.get(job_id)
        if job is None:
            return
        with self._lock:
            self._drop(job)

    def _drop(self, job: Job) -> None:
        """Cancel ``job`` (lock held): a waiting one ends now, a running one at its next step."""
        job.cancel()
        if job.id in self._waiting:  # never started: finish it now, the worker will skip it
            self._waiting.remove(job.id)
            job.status, job.finished = CANCELLED, time.time()
            job.finished_event.set()

    def wait(self, job: Job, timeout: float = 60.0) -> Job:
        """Block until ``job`` is finished (tests and scripts)."""
        job.finished_event.wait(timeout)
        return job

    def _prune(self) -> None:
        finished = sorted((j for j in self._jobs.values() if j.done), key=lambda j: j.finished or 0)
        for job in finished[:max(0, len(finished) - self._keep_finished)]:
            self._jobs.pop(job.id, None)
        for job in finished[:max(0, len(finished) - self._keep_context)]:
            job.context = None

    def _serve(self) -> None:
        while True:
            with self._wake:
                while not self._waiting:
                    self._wake.wait()
                job = self._jobs[self._order()[0]]
                self._waiting.remove(job.id)
                self.current = job
                job.status, job.started = RUNNING, time.time()
            try:
                if job.cancel_event.is_set():
                    raise CancelledError("cancelled before it started")
                job.result = job.work(job.progress)
                job.status = DONE
            except CancelledError:
                job.status = CANCELLED
            except BaseException as exc:  # noqa: BLE001 - one job's failure must not stop the worker
                if not isinstance(exc, StudioError):
                    log.exception("job %s (%s) failed", job.id, job.label)
                job.error, job.status = describe_error(exc), FAILED
                if is_out_of_memory(exc):
                    _free_gpu_memory()
            finally:
                job.finished = time.time()
                if job.status == DONE:
                    job.context = None  # the result carries it from now on
                with self._lock:
                    self.current = None
                job.finished_event.set()


def _free_gpu_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - best effort
        pass
