"""Asynchronous execution: ``Executable.submit`` and ``Executable.map``.

An accelerator is busy only while the host keeps it fed. ``submit`` starts one
inference and returns a :class:`concurrent.futures.Future` at once; ``map``
keeps a bounded number in flight and yields results in order. A runner that
pipelines natively (OpenVINO's infer request queue) implements
:meth:`~hal.plugin.Runner.start`; every other runner gets the core's pool of
``Runner.concurrency`` threads over its ``infer``. Either way the in-flight
count is bounded, so ``submit`` blocks while the queue is full (back-pressure,
like OpenVINO's ``AsyncInferQueue``) instead of piling up copies of inputs.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .errors import UsageError, out_of_memory



class Pipeline:
    """The in-flight work of one executable (a ``hal.Executable``, duck-typed: that
    module imports this one): a semaphore of ``depth`` slots and,
    for runners without a native ``start``, a thread pool of ``workers``."""

    def __init__(self, exe: Any, native: bool):
        runner = exe.runner
        self.workers = max(1, int(runner.concurrency if runner.thread_safe else 1))
        #: requests in flight at most: enough to keep every worker (or every native
        #: request) busy while the host prepares the next input
        self.depth = 2 * self.workers
        self._slots = threading.BoundedSemaphore(self.depth)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        #: the runner has its own ``start`` (a native queue); else the core's pool
        self._native = native

    def pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="hal-infer")
                weakref.finalize(self, self._pool.shutdown, wait=False)
            return self._pool

    def submit(self, exe: Any, arrays: list[np.ndarray],
               finish: Callable[[list[np.ndarray]], Any]) -> Future:
        """Start one inference on checked arrays; the future resolves to ``finish(outputs)``."""
        fut: Future = Future()
        fut.set_running_or_notify_cancel()
        self._slots.acquire()  # back-pressure: wait for a free slot

        def done(outputs: list[np.ndarray] | None, error: BaseException | None) -> None:
            self._slots.release()
            if error is None:
                try:
                    fut.set_result(finish(outputs))
                except BaseException as e:  # noqa: BLE001 - e.g. a runner returning too few outputs
                    fut.set_exception(e)
            else:
                fut.set_exception(_as_hal(error, exe))

        try:
            if self._native:
                # the runner copies what it keeps before start returns (the contract of infer's inputs)
                exe._serial(exe.runner.start, arrays, done)
            else:
                # the caller may reuse its buffers once submit returns: the pool works on copies
                self.pool().submit(_call, exe, [a.copy() for a in arrays], done)
        except BaseException as e:
            self._slots.release()
            raise _as_hal(e, exe) from None
        return fut


def _call(exe: Any, arrays: list[np.ndarray], done) -> None:
    try:
        out = exe._infer(arrays)
    except BaseException as e:  # noqa: BLE001 - every failure belongs to the future
        done(None, e)
    else:
        done(out, None)


def _as_hal(e: BaseException, exe: Any) -> BaseException:
    if isinstance(e, MemoryError):
        return out_of_memory(f"running the model on {exe.info.target}")
    return e


def ordered(exe: Any, items: Iterable[Any], max_in_flight: int | None) -> Iterator[Any]:
    """``Executable.map``: submit ahead by at most ``max_in_flight``, yield in order."""
    limit = exe._pipeline().depth if max_in_flight is None else max_in_flight
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise UsageError(f"max_in_flight={max_in_flight!r} is not a positive int",
                         "pass 1 or more, or None for the executable's own queue depth")
    pending: deque[Future] = deque()
    try:
        for item in items:
            if isinstance(item, dict):
                pending.append(exe.submit(**item))
            elif isinstance(item, (tuple, list)):
                pending.append(exe.submit(*item))
            else:
                pending.append(exe.submit(item))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # a consumer that stops early leaves nothing running on its behalf
        for f in pending:
            try:
                f.result()
            except Exception:  # noqa: BLE001 - the consumer stopped; its errors go with it
                pass
