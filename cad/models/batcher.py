"""Dynamic batching: the patches of concurrent requests are coalesced into model runs.

Modelled on Triton's dynamic batcher. Worker threads (decoding images and
cutting patches) hand their patches to :meth:`DynamicBatcher.predict` and
block; runner threads take queued patches in arrival order and run them as
one batch once ``preferred_batch`` patches are waiting or the oldest request
has waited ``max_queue_delay_s``, never more than ``max_batch`` patches per
run. A request larger than ``max_batch`` is split across consecutive runs.

- Queue full (``max_queue_requests`` requests waiting): :class:`LimitExceeded`
  at once (RESOURCE_EXHAUSTED), never queued.
- A request whose deadline passes while it waits is answered with
  :class:`DeadlineExceeded` without running the model for it.
- Only requests on the same model version share a run; during a hot swap the
  old version's requests finish on it.

:class:`SerialBatcher` is the same contract without threads (one caller, batches in turn), for
the trainer and the experiment. Both pad a batch to the model's bucket (:func:`bucket_size`);
nothing else pads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from cad.errors import DeadlineExceeded, LimitExceeded, ModelUnavailable
from cad.metrics import ServiceMetrics
from cad.models.model import LoadedModel
from cad.models.sampler import ImagePatches

Patches = npt.NDArray[np.float32] | ImagePatches
"""A request's patches: cut (float32 ``(n, 3, S, S)``, the host path) or still to be cut from
their image on the model's device (the graph path, when ``model.samples_on_device``)."""

log = logging.getLogger(__name__)


def bucket_size(model: LoadedModel, n: int) -> int:
    """The batch size ``n`` patches run at on ``model``: its bucket, or ``n`` without buckets."""
    buckets = model.buckets
    if buckets and 0 < n < buckets[-1]:
        return next(b for b in buckets if b >= n)
    return n


@dataclass(frozen=True)
class BatchingConfig:
    preferred_batch: int = 32
    """Run as soon as this many patches wait."""
    max_batch: int = 64
    """Never more patches per model run."""
    max_queue_delay_s: float = 0.002
    """Longest the oldest waiting request is held back to fill a batch."""
    max_queue_requests: int = 256
    """Requests allowed to wait; more are refused with RESOURCE_EXHAUSTED."""
    runners: int = 1
    """Threads running the model (model instances): 1 suits a CPU, 2 overlap copies on a GPU."""

    def __post_init__(self) -> None:
        if not 1 <= self.preferred_batch <= self.max_batch:
            raise ValueError(
                f"need 1 <= preferred batch ({self.preferred_batch}) <= max batch ({self.max_batch})"
            )
        if self.max_queue_delay_s < 0 or self.max_queue_requests < 1 or self.runners < 1:
            raise ValueError("queue delay must be >= 0, queue size and runners >= 1")


@dataclass(eq=False)
class _Request:
    model: LoadedModel
    patches: Patches
    deadline: float | None
    enqueued: float
    future: Future[npt.NDArray[np.float32]] = field(default_factory=Future)
    taken: int = 0
    """Patches handed to a runner so far."""
    done: int = 0
    parts: dict[int, npt.NDArray[np.float32]] = field(default_factory=dict)

    @property
    def waiting(self) -> int:
        return len(self.patches) - self.taken


class _Workspace:
    """A runner's own batch array, reused from run to run.

    Concatenating the requests' patches into a fresh array cost a new 38 MB of memory per
    64-patch batch at 224 px (page faults, zeroing, unmapping); the runner fills this one.
    """

    def __init__(self) -> None:
        self._array: npt.NDArray[np.float32] | None = None

    def assemble(self, parts: list[npt.NDArray[np.float32]], size: int) -> npt.NDArray[np.float32]:
        """The parts one after another, then zero rows up to ``size`` (a padded bucket)."""
        shape = parts[0].shape[1:]
        array = self._array
        if array is None or len(array) < size or array.shape[1:] != shape:
            array = self._array = np.empty((size, *shape), dtype=np.float32)
        offset = 0
        for part in parts:
            array[offset : offset + len(part)] = part
            offset += len(part)
        array[offset:size] = 0.0
        return array[:size]

    def run(self, model: LoadedModel, parts: list[Patches]) -> npt.NDArray[np.float32]:
        """Probabilities ``(n, K)`` for the parts' ``n`` patches in order, run as one batch
        padded to the model's bucket."""
        n = sum(len(p) for p in parts)
        size = bucket_size(model, n)
        if isinstance(parts[0], ImagePatches):
            return model.run_images(parts, size)[:n]  # type: ignore[arg-type]
        if len(parts) == 1 and size == n:  # one request's slice: run it where it lies
            return model.run(np.ascontiguousarray(parts[0], dtype=np.float32))
        return model.run(self.assemble(parts, size))[:n]  # type: ignore[arg-type]


class SerialBatcher:
    """Runs one caller's patches in batches of at most ``max_batch``, each padded to its bucket."""

    def __init__(self, max_batch: int, metrics: ServiceMetrics | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self.metrics = metrics
        self._workspace = _Workspace()

    def predict(
        self,
        model: LoadedModel,
        patches: Patches,
        deadline: float | None = None,
    ) -> npt.NDArray[np.float32]:
        """Probabilities ``(n, K)`` for ``patches`` (``deadline`` is checked before each batch).

        Raises:
            DeadlineExceeded: the deadline passed before all batches ran.
        """
        outputs = []
        for start in range(0, len(patches), self.max_batch):
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded("the request's deadline passed before it reached the model")
            part = patches[start : start + self.max_batch]
            t0 = time.perf_counter()
            outputs.append(self._workspace.run(model, [part]))
            if self.metrics is not None:
                self.metrics.observe_batch(len(part), time.perf_counter() - t0)
        if not outputs:
            return np.empty((0, model.num_classes), dtype=np.float32)
        return np.concatenate(outputs)


class DynamicBatcher:
    """Coalesces patches of concurrent requests into model runs (thread-safe)."""

    def __init__(
        self,
        config: BatchingConfig,
        metrics: ServiceMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._runners = [
            threading.Thread(target=self._run_forever, name=f"cad-batcher-{i}", daemon=True)
            for i in range(config.runners)
        ]
        for runner in self._runners:
            runner.start()

    # ------------------------------------------------------------------ callers

    @property
    def max_batch(self) -> int:
        return self.config.max_batch

    def predict(
        self,
        model: LoadedModel,
        patches: Patches,
        deadline: float | None = None,
    ) -> npt.NDArray[np.float32]:
        """Probabilities ``(n, K)`` for ``patches``; blocks until its batches have run.

        ``deadline`` is a time on the batcher's clock (:func:`time.monotonic`).

        Raises:
            LimitExceeded: the queue is full. DeadlineExceeded: the deadline passed before the
            model ran. ModelUnavailable: the batcher is shut down.
        """
        if len(patches) == 0:
            return np.empty((0, model.num_classes), dtype=np.float32)
        now = self.clock()
        if deadline is not None and now >= deadline:
            self.metrics.batch_refused.labels("deadline").inc()
            raise DeadlineExceeded("the request's deadline passed before it reached the model")
        request = _Request(model, patches, deadline, now)
        with self._cond:
            if self._closed:
                raise ModelUnavailable("the server is shutting down")
            if len(self._queue) >= self.config.max_queue_requests:
                self.metrics.batch_refused.labels("queue_full").inc()
                raise LimitExceeded(
                    f"the inference queue is full ({len(self._queue)} requests waiting, setting "
                    "CAD_BATCH_MAX_QUEUE_REQUESTS); retry with back-off"
                )
            self._queue.append(request)
            self.metrics.batch_queue_requests.set(len(self._queue))
            self._cond.notify_all()
        return request.future.result()

    def close(self) -> None:
        """Stop the runners; requests still waiting fail with ModelUnavailable."""
        with self._cond:
            self._closed = True
            leftovers = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for request in leftovers:
            if not request.future.done():
                request.future.set_exception(ModelUnavailable("the server is shutting down"))
        for runner in self._runners:
            runner.join(timeout=10)

    # ------------------------------------------------------------------ runners

    def _waiting_patches(self, model: LoadedModel) -> int:
        total = 0
        for request in self._queue:
            if request.model is not model:
                break
            total += request.waiting
        return total

    def _next_batch(self) -> list[tuple[_Request, int, int]] | None:
        """Under the lock: wait for work, then take one batch (request, start, stop) slices."""
        cfg = self.config
        while True:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            head = self._queue[0]
            flush_at = head.enqueued + cfg.max_queue_delay_s
            while self._queue and self._queue[0] is head and not self._closed:
                left = flush_at - self.clock()
                if left <= 0 or self._waiting_patches(head.model) >= cfg.preferred_batch:
                    break
                self._cond.wait(left)
            if self._closed:
                return None
            now = self.clock()
            for request in [
                r
                for r in self._queue
                if r.taken == 0 and r.deadline is not None and r.deadline <= now
            ]:
                self._queue.remove(request)
                self.metrics.batch_refused.labels("deadline").inc()
                request.future.set_exception(
                    DeadlineExceeded(
                        f"the request's deadline passed after {now - request.enqueued:.3f} s in the "
                        "inference queue; the model did not run for it"
                    )
                )
            if not self._queue:
                self.metrics.batch_queue_requests.set(0)
                continue
            model = self._queue[0].model
            taken: list[tuple[_Request, int, int]] = []
            size = 0
            while self._queue and self._queue[0].model is model and size < cfg.max_batch:
                request = self._queue[0]
                if request.taken == 0:
                    self.metrics.batch_queue_latency.observe(now - request.enqueued)
                k = min(request.waiting, cfg.max_batch - size)
                taken.append((request, request.taken, request.taken + k))
                request.taken += k
                size += k
                if request.waiting == 0:
                    self._queue.popleft()
            self.metrics.batch_queue_requests.set(len(self._queue))
            return taken

    def _run_forever(self) -> None:
        workspace = _Workspace()
        while True:
            with self._cond:
                taken = self._next_batch()
            if taken is None:
                return
            self._run(taken, workspace)

    def _run(self, taken: list[tuple[_Request, int, int]], workspace: _Workspace) -> None:
        model = taken[0][0].model
        parts = [r.patches[a:b] for r, a, b in taken]
        n = sum(len(p) for p in parts)
        t0 = time.perf_counter()
        try:
            out = workspace.run(model, parts)
        except BaseException as exc:  # every waiting caller gets the failure, none hangs
            log.exception("model run over %d patches failed", n)
            with self._cond:
                for request, _, _ in taken:
                    if request in self._queue:
                        self._queue.remove(request)
                    if not request.future.done():
                        request.future.set_exception(exc)
            return
        self.metrics.observe_batch(n, time.perf_counter() - t0)
        offset = 0
        finished = []
        with self._cond:
            for request, a, b in taken:
                request.parts[a] = out[offset : offset + (b - a)]
                offset += b - a
                request.done += b - a
                if request.done == len(request.patches) and not request.future.done():
                    finished.append(request)
        for request in finished:
            pieces = [request.parts[k] for k in sorted(request.parts)]
            request.future.set_result(pieces[0] if len(pieces) == 1 else np.concatenate(pieces))
