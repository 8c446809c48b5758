"""Asynchronous execution: ``Executable.submit`` and ``Executable.map``.

An accelerator is busy only while the host keeps it fed. ``submit`` starts one
inference and returns a :class:`concurrent.futures.Future` at once; ``map``
keeps a bounded number in flight and yields results in order. A runner that
pipelines natively (OpenVINO's infer request queue) implements
:meth:`~hal.plugin.Runner.start`; every other runner gets the core's pool of
``Runner.concurrency`` threads over its ``infer``. Either way the in-flight
count is bounded, so ``submit`` blocks while the queue is full (back-pressure,
like OpenVINO's ``AsyncInferQueue``) instead of piling up copies of inputs.

The host's share of each inference is kept small, since on a fast model it is
what limits the rate (docs/throughput.md). A whole batch (``map``, LoadGen's
Offline and Multi-Stream queries) goes through :meth:`Pipeline.stream`: the
runner's own ``stream`` where it has one (OpenVINO: requests refilled by the
consumer's thread, which reads each finished request's outputs as it reuses it,
with no call back into Python per inference), else :meth:`Pipeline.start` per
item. ``start`` takes a plain completion callback (a ``Future`` is made for
``submit`` only); a free slot is a token in a ``SimpleQueue`` (two C calls,
where a ``Semaphore`` runs Python under a ``Condition``); the callback does no
more than release the slot and hand the outputs on, and ``map`` checks and
structures them in the consumer's thread.
"""

from __future__ import annotations

import threading
import weakref
from _thread import allocate_lock
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from queue import SimpleQueue
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from . import signature
from .errors import UsageError, out_of_memory

#: ``done(outputs, None)`` or ``done(None, error)``: how an inference reports back
Done = Callable[[Any, "BaseException | None"], None]


class Pipeline:
    """The in-flight work of one executable (a ``hal.Executable``, duck-typed: that
    module imports this one): ``depth`` slots and, for runners without a native
    ``start``, a thread pool of ``workers``."""

    def __init__(self, exe: Any, native: bool, streams: bool = False):
        runner = exe.runner
        self.workers = max(1, int(runner.concurrency if runner.thread_safe else 1))
        #: requests in flight at most: enough to keep every worker (or every native
        #: request) busy while the host prepares the next input
        self.depth = 2 * self.workers
        self._free: SimpleQueue = SimpleQueue()  # one token per free slot
        for _ in range(self.depth):
            self._free.put(None)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        #: the runner has its own ``start`` (a native queue); else the core's pool
        self._native = native
        #: the runner has its own ``stream`` (a batch loop without callbacks), used for
        #: whole batches where it is thread-safe (a generator cannot hold the core's lock)
        self._streams = streams and runner.thread_safe

    @property
    def serial(self) -> bool:
        """One inference at a time and no native queue: the pool would only hand each
        call to its one thread, so a caller that waits for every result (LoadGen's
        Offline, Single- and Multi-Stream) runs them in its own thread instead."""
        return not self._native and self.workers == 1

    def pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="hal-infer")
                weakref.finalize(self, self._pool.shutdown, wait=False)
            return self._pool

    def start(self, exe: Any, arrays: list[np.ndarray], done: Done, copy: bool = True) -> None:
        """Start one inference on checked arrays and return once the runtime holds what
        it needs; ``done(outputs, error)`` is called once, from any thread, with the
        runner's flat outputs (unchecked) or a hal error, after the slot is free again.
        Blocks while every slot is taken. ``copy=False``: the caller guarantees the
        arrays stay unchanged until ``done`` (LoadGen's private QSL), so the pool works
        on them directly; a native runner copies what it keeps either way."""
        free = self._free
        free.get()  # back-pressure: wait for a free slot

        def finished(outputs: Any, error: BaseException | None) -> None:
            free.put(None)
            done(outputs, None if error is None else _as_hal(error, exe))

        try:
            if self._native:
                # the runner copies what it keeps before start returns (the contract of infer's inputs)
                exe._serial(exe.runner.start, arrays, finished)
            else:
                # the caller may reuse its buffers once start returns: the pool works on copies
                self.pool().submit(_call, exe, [a.copy() for a in arrays] if copy else arrays,
                                   finished)
        except BaseException as e:
            free.put(None)
            raise _as_hal(e, exe) from None

    def submit(self, exe: Any, arrays: list[np.ndarray],
               finish: Callable[[list[np.ndarray]], Any]) -> Future:
        """Start one inference on checked arrays; the future resolves to ``finish(outputs)``."""
        fut: Future = Future()
        fut.set_running_or_notify_cancel()

        def done(outputs: Any, error: BaseException | None) -> None:
            if error is None:
                try:
                    fut.set_result(finish(outputs))
                except BaseException as e:  # noqa: BLE001 - e.g. a runner returning too few outputs
                    fut.set_exception(e)
            else:
                fut.set_exception(error)

        self.start(exe, arrays, done)
        return fut


    def stream(self, exe: Any, items: Iterable[list[np.ndarray]], limit: int | None = None,
               copy: bool = True) -> Iterator[Any]:
        """Each item's flat outputs (unchecked), in order: through the runner's own
        ``stream`` where it has one and no ``limit`` is asked, else each item started as
        ``submit`` starts it with at most ``limit`` (default ``depth``) ahead. Items are
        checked arrays; ``copy`` as for :meth:`start`. A failure raises here, as a hal
        error; stopping early leaves nothing running."""
        if self._streams and limit is None:
            try:
                yield from exe.runner.stream(iter(items))
            except MemoryError:
                raise _as_hal(MemoryError(), exe) from None
            return
        limit = self.depth if limit is None else limit
        pending: deque[_Pending] = deque()
        try:
            for arrays in items:
                p = _Pending()
                self.start(exe, arrays, p, copy)
                pending.append(p)
                if len(pending) >= limit:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # a consumer that stops early leaves nothing running on its behalf
            for p in pending:
                p.wait()


def _call(exe: Any, arrays: list[np.ndarray], done: Done) -> None:
    try:
        out = exe._infer(arrays)
    except BaseException as e:  # noqa: BLE001 - every failure belongs to the caller
        done(None, e)
    else:
        done(out, None)


def _as_hal(e: BaseException, exe: Any) -> BaseException:
    if isinstance(e, MemoryError):
        return out_of_memory(f"running the model on {exe.info.target}")
    return e


class _Pending:
    """One inference a stream waits for: a lock held until ``done`` runs (no Future,
    no Condition; the consumer blocks in one C call)."""

    __slots__ = ("_lock", "outputs", "error")

    def __init__(self) -> None:
        self._lock = allocate_lock()
        self._lock.acquire()
        self.outputs: Any = None
        self.error: BaseException | None = None

    def __call__(self, outputs: Any, error: BaseException | None) -> None:
        self.outputs, self.error = outputs, error
        self._lock.release()

    def wait(self) -> None:
        self._lock.acquire()
        self._lock.release()  # a second wait (the cleanup after an error) returns at once

    def result(self) -> Any:
        self.wait()
        if self.error is not None:
            raise self.error
        return self.outputs


def ordered(exe: Any, items: Iterable[Any], max_in_flight: int | None) -> Iterator[Any]:
    """``Executable.map``: each item checked as it is drawn, the results in order, at
    most ``max_in_flight`` started ahead (default: the executable's own queue, or the
    runner's ``stream``)."""
    pipe = exe._pipeline()
    if max_in_flight is not None and (not isinstance(max_in_flight, int)
                                      or isinstance(max_in_flight, bool) or max_in_flight < 1):
        raise UsageError(f"max_in_flight={max_in_flight!r} is not a positive int",
                         "pass 1 or more, or None for the executable's own queue depth")
    tree, check, outputs = exe.info.output_tree, exe.check_inputs, exe._outputs

    def checked() -> Iterator[list[np.ndarray]]:
        for item in items:
            if isinstance(item, dict):
                yield check(tuple(exe._by_name(item, ())))
            else:
                yield check(tuple(item) if isinstance(item, (tuple, list)) else (item,))

    results = pipe.stream(exe, checked(), max_in_flight)
    try:
        for outs in results:
            yield signature.unflatten(tree, outputs(outs))
    finally:  # a consumer that stops early: the stream waits for what it started
        results.close()
