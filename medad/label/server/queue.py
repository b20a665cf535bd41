"""The inference queue: inferences run in worker threads, never on the server's event loop.

MONAI Label 0.8.5 runs ``POST /infer`` inside its ``async`` endpoint, on the one event-loop thread: while a volume is
scored, ``/info``, ``/datastore`` and every other request wait (20 s for ``/info`` during one BraTS volume).
:class:`InferQueue` runs each inference in one of ``workers`` threads (torch releases the GIL while it computes) and
awaits it, so the event loop keeps answering. At most ``max_pending`` inferences wait; one more is answered 503 with
``Retry-After`` instead of piling up.

The app keeps one queue per model (a quick model never waits behind another's volumes). Each job has a position and
progress: ``GET /medad/queue`` lists the running and waiting inferences (model, image, queue position in its model's
queue, seconds waited/running, slices scored out of the volume's slices), and every inference answer has the headers
``X-Medad-Queue-Wait`` and ``X-Medad-Run-Time`` (seconds).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import Busy

__all__ = ["InferJob", "InferQueue", "current_job"]

_local = threading.local()


def current_job() -> Optional["InferJob"]:
    """The job the calling worker thread is running (None outside a job): lets the infer task report progress."""
    return getattr(_local, "job", None)


@dataclass
class InferJob:
    """One queued or running inference."""

    id: int
    model: str
    image: str
    submitted: float = field(default_factory=time.monotonic)
    started: Optional[float] = None
    finished: Optional[float] = None
    slices_total: int = 0
    slices_done: int = 0

    def progress(self, done: int, total: Optional[int] = None) -> None:
        """Report ``done`` slices scored (of ``total``)."""
        if total is not None:
            self.slices_total = int(total)
        self.slices_done = int(done)

    @property
    def waited(self) -> float:
        return (self.started or time.monotonic()) - self.submitted

    @property
    def run_time(self) -> float:
        return 0.0 if self.started is None else (self.finished or time.monotonic()) - self.started


class InferQueue:
    """Bounded queue of inferences run by ``workers`` threads.

    Args:
        workers: inferences run at the same time.
        max_pending: inferences allowed to wait for a worker; more are refused with :class:`Busy` (503).
    """

    def __init__(self, workers: int = 1, max_pending: int = 32) -> None:
        self.workers = max(1, int(workers))
        self.max_pending = max(0, int(max_pending))
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="medad-infer")
        self._lock = threading.Lock()
        self._jobs: dict[int, InferJob] = {}
        self._ids = itertools.count(1)
        self.completed = 0
        self.refused = 0

    def _waiting(self) -> list[InferJob]:
        return sorted((j for j in self._jobs.values() if j.started is None), key=lambda j: j.id)

    async def run(self, fn: Callable[[], Any], model: str, image: str) -> tuple[Any, InferJob]:
        """Run ``fn()`` in a worker thread and return ``(its result, the job)``; raises :class:`Busy` when full."""
        with self._lock:
            waiting = len(self._waiting())
            if waiting >= self.max_pending:
                self.refused += 1
                running = [j for j in self._jobs.values() if j.started is not None]
                eta = max(1, int(round(sum(j.run_time for j in running) / max(len(running), 1) or 5)))
                raise Busy(f"{waiting} inferences are already waiting (--conf infer_queue {self.max_pending}); "
                           f"retry later (GET /medad/queue shows the queue).", headers={"Retry-After": str(eta)})
            job = InferJob(next(self._ids), model, image)
            self._jobs[job.id] = job

        def work():
            job.started = time.monotonic()
            _local.job = job
            try:
                return fn()
            finally:
                _local.job = None
                job.finished = time.monotonic()

        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, work)
        finally:
            with self._lock:
                self._jobs.pop(job.id, None)
                self.completed += 1
        return result, job

    def status(self) -> dict[str, Any]:
        """Plain-data view of the queue for ``GET /medad/queue``."""
        with self._lock:
            running = sorted((j for j in self._jobs.values() if j.started is not None), key=lambda j: j.id)
            waiting = self._waiting()

            def view(j: InferJob, position: Optional[int]) -> dict[str, Any]:
                out = {"job": j.id, "model": j.model, "image": j.image, "waited_s": round(j.waited, 2)}
                if position is None:
                    out.update({"running_s": round(j.run_time, 2), "slices_done": j.slices_done,
                                "slices_total": j.slices_total,
                                "progress": round(j.slices_done / j.slices_total, 3) if j.slices_total else None})
                else:
                    out["position"] = position
                return out

            return {"workers": self.workers, "max_waiting": self.max_pending,
                    "running": [view(j, None) for j in running],
                    "waiting": [view(j, i) for i, j in enumerate(waiting, start=1)],
                    "completed": self.completed, "refused": self.refused}

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
