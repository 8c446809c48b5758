"""The OpenVINO executable: a lean run path, per-layer profiling, throughput mode.

``infer`` takes an idle infer request from a pool (one is made at construction,
more on demand while other threads hold the rest: an infer request serves one
call at a time), feeds small inputs by copying them into the request's own
buffers and large ones as zero-copy tensors over the caller's memory, and copies
the outputs out. Profiling and throughput each compile their own variant lazily
(``PERF_COUNT``, ``THROUGHPUT`` hint) so that ordinary runs never pay for
counters or extra streams.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from hal import Device, DeviceUnavailableError, HalError, LayerTime
from hal.plugin import ExecutableInfo, Runner

from . import compat, pipeline
from .convert import short

META = "openvino.json"
#: inputs up to this size are copied into the request's buffer instead of shared
COPY_MAX_BYTES = 1 << 18


def vanished(core, device_id: str) -> bool:
    """Whether the device this model was compiled for is gone from the host."""
    if device_id == "AUTO":
        return False
    try:
        return device_id not in core.available_devices
    except Exception:  # noqa: BLE001 - the plugin itself failing counts as gone
        return True


def runtime_error(core, device: Device, e: BaseException, doing: str) -> HalError:
    """Map an OpenVINO runtime failure: a missing device is DeviceUnavailableError."""
    if vanished(core, device.id):
        return DeviceUnavailableError(
            f"{device.target} ({device.name}) is no longer available: it vanished after the "
            f"model was compiled ({doing} failed: {short(e)})",
            "reconnect the device (or reload its driver), then hal.load / hal.compile again")
    return HalError(f"OpenVINO {doing} failed on {device.target}: {short(e)}",
                    "check the inputs, or recompile the model")


class _Slot:
    """One infer request and the buffers pre-bound to it; serves one call at a time."""

    __slots__ = ("req", "in_views", "out_views")

    def __init__(self, req, in_views: list, out_views: list | None):
        self.req, self.in_views, self.out_views = req, in_views, out_views


class OpenVINOExecutable(Runner):
    thread_safe = True  # one infer request per concurrent call (see _slot)

    def __init__(self, info: ExecutableInfo, device: Device, core, ov_model, compiled,
                 config: dict[str, str]):
        super().__init__(info, device)
        self._o = compat.api()
        self.core = core
        self.ov_model = ov_model        # the (quantized) model: saved as IR
        self.compiled = compiled
        self.config = config            # compile properties, without CACHE_DIR
        self._n_out = len(compiled.outputs)
        self._tensor = self._o.ov.Tensor
        self._infer_kw = self._o.infer_kwargs
        self._variants: dict[str, Any] = {}
        self._lock = threading.Lock()   # compiling a variant, making the async queue
        self._start_lock = threading.Lock()
        self._queue = None              # the AsyncInferQueue behind submit, made on first use
        self._queue_inputs = None       # its lean start (_request_inputs), where it has one
        self._streams: list = []        # idle callback-free queues for stream (list.pop/append are atomic)
        # idle requests; list.pop/append are atomic, so taking one needs no lock
        self._idle: list[_Slot] = [self._slot()]

    # --- run ------------------------------------------------------------------------
    def _slot(self) -> _Slot:
        """A new infer request, pre-bound: small static inputs are copied into
        the request's own input buffers (cheaper than wrapping each array in a
        shared tensor), large ones are shared zero-copy; static outputs are read
        through views fetched once. A warm-up call checks the views stay put."""
        ins, outs = self.info.inputs, self.info.outputs
        req = self.compiled.create_infer_request()
        in_views: list = [None] * len(ins)
        if not all(None not in s.shape for s in ins) or \
                not all(s.dtype in ("float16", "float32", "float64") for s in ins):
            # zeros in an integer input (a divisor, a block size: Col2Im) raise SIGFPE
            return _Slot(req, in_views, None)
        try:
            for i, s in enumerate(ins):
                buf = req.get_input_tensor(i).data
                buf[...] = 0  # the warm-up below runs on defined values
                if buf.nbytes <= COPY_MAX_BYTES:
                    in_views[i] = buf
            req.infer(**self._infer_kw)
            if all(None not in s.shape for s in outs):
                views = [req.get_output_tensor(i).data for i in range(self._n_out)]
                req.infer(**self._infer_kw)
                if all(v.__array_interface__["data"][0] ==
                       req.get_output_tensor(i).data.__array_interface__["data"][0]
                       for i, v in enumerate(views)):
                    return _Slot(req, in_views, views)
        except (RuntimeError, TypeError, ValueError):
            in_views = [None] * len(ins)
        return _Slot(req, in_views, None)

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        slot = None
        try:
            try:
                slot = self._idle.pop()
            except IndexError:  # every request is busy in another thread: one more
                slot = self._slot()
            req = slot.req
            # A shared tensor does not keep its array alive once set on the request:
            # hold every one until infer returns (a temporary copy freed mid-call is
            # what made views and read-only inputs read freed memory).
            shared = []
            for i, a in enumerate(inputs):
                view = slot.in_views[i]
                if view is not None:
                    np.copyto(view, a)
                    continue
                if not (a.flags.c_contiguous and a.flags.writeable):
                    # OpenVINO shares only writable C-contiguous memory (it never writes it)
                    a = np.array(a, order="C")
                t = self._tensor(a, shared_memory=True)
                shared.append(t)
                req.set_input_tensor(i, t)
            req.infer(**self._infer_kw)
            if slot.out_views is not None:
                return [v.copy() for v in slot.out_views]
            return [req.get_output_tensor(i).data.copy() for i in range(self._n_out)]
        except RuntimeError as e:
            raise runtime_error(self.core, self.device, e, "inference") from None
        finally:
            if slot is not None:
                self._idle.append(slot)

    # --- async: Executable.submit / map ----------------------------------------------
    @property
    def concurrency(self) -> int:
        """The queue's request count (the THROUGHPUT compile's optimal number)."""
        return len(self._async_queue())

    def _async_queue(self):
        """benchmark_app's pipeline, made once: an AsyncInferQueue of the optimal
        number of requests on the THROUGHPUT-hinted compile of the same model at the
        same precision (streams let requests overlap; ``pipeline.verify`` checked it)."""
        q = self._queue
        if q is None:
            with self._lock:
                if self._queue is None:
                    cm = self._variant_locked("throughput", {"PERFORMANCE_HINT": "THROUGHPUT"})
                    try:
                        nireq = int(cm.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
                        queue = self._o.ov.AsyncInferQueue(cm, max(1, nireq))
                    except RuntimeError as e:
                        raise runtime_error(self.core, self.device, e, "creating infer requests") from None
                    queue.set_callback(self._finished)
                    self._queue_inputs = self._request_inputs(queue)
                    self._queue = queue
                q = self._queue
        return q

    def _request_inputs(self, queue) -> tuple[Any, list[list[np.ndarray | None]]] | None:
        """(the C++ ``start_async``, each request's own input buffers as numpy views):
        ``start`` copies each input straight into the next idle request's buffer and
        starts it, skipping the Python data dispatch of ``AsyncInferQueue.start_async``
        (a request object, a dict and a type dispatch per input, each call). An input
        without a fixed buffer of its exact shape and dtype (a free dimension) has None:
        it goes in as a new tensor holding a copy. None: that start is not there (an
        OpenVINO whose queue is the C++ class itself); ``start`` uses the dispatch."""
        start = getattr(super(type(queue), queue), "start_async", None)  # the C++ method
        if start is None:
            return None
        ins = self.info.inputs
        views: list[list[np.ndarray | None]] = []
        for r in range(len(queue)):
            req, own = queue[r], []
            for i, s in enumerate(ins):
                v = None
                if None not in s.shape:
                    try:
                        v = req.get_input_tensor(i).data
                        if v.shape != tuple(s.shape) or v.dtype != np.dtype(s.dtype) \
                                or not v.flags.writeable:
                            v = None
                    except (RuntimeError, TypeError, ValueError):
                        v = None
                own.append(v)
            views.append(own)
        return start, views

    def _fill(self, views: list[np.ndarray | None], inputs: list[np.ndarray]) -> dict:
        """Copy ``inputs`` into one request's own buffers; return the inputs that have none
        as new tensors holding a copy (a free dimension), for the C++ ``start_async``."""
        fresh = {}
        for i, (buf, a) in enumerate(zip(views, inputs)):
            if buf is None:
                fresh[i] = self._tensor(a)  # shared_memory=False: a copy it owns
            else:  # the request's own memory: the caller may reuse its array at once
                np.copyto(buf, a)
        return fresh

    def start(self, inputs: list[np.ndarray], done) -> None:
        q = self._async_queue()
        lean = self._queue_inputs
        with self._start_lock:  # one caller at a time takes the next idle request
            try:
                if lean is None:  # share_inputs=False: copied into the request before it returns
                    q.start_async(dict(enumerate(inputs)), done, share_inputs=False)
                    return
                start, views = lean
                # blocks, without the GIL, while every request is busy; the request it names
                # stays the first idle one until start takes it (only start takes requests,
                # and it runs under _start_lock)
                start(self._fill(views[q.get_idle_request_id()], inputs), done)
            except RuntimeError as e:
                raise runtime_error(self.core, self.device, e, "starting an inference") from None

    def stream(self, inputs):
        """benchmark_app's loop in the consumer's thread, for ``Executable.map`` and LoadGen's
        Offline and Multi-Stream: a queue of twice the optimal number of requests (one
        waiting behind each running one, so a stream never waits for the host) on the
        THROUGHPUT compile, with no Python callback, so a finished request costs the
        runtime's threads no GIL: this thread waits for an idle request (without the
        GIL), reads the outputs it holds, refills it and starts it again."""
        q, start, views, reqs = self._stream_queue()
        n_out = range(self._n_out)
        held: list[int | None] = [None] * len(reqs)  # the item whose outputs each request holds
        ready: dict[int, list[np.ndarray]] = {}
        sent = nxt = 0
        finished = False
        try:
            for arrays in inputs:
                r = q.get_idle_request_id()  # waits without the GIL while every request is busy
                if held[r] is not None:
                    ready[held[r]] = [reqs[r].get_output_tensor(i).data.copy() for i in n_out]
                if start is None:
                    q.start_async(dict(enumerate(arrays)), None, share_inputs=False)
                else:  # the C++ start takes request r: the first idle one, and only we start here
                    start(self._fill(views[r], arrays), None)
                held[r], sent = sent, sent + 1
                while nxt in ready:
                    yield ready.pop(nxt)
                    nxt += 1
            q.wait_all()
            for r, k in enumerate(held):
                if k is not None:
                    ready[k] = [reqs[r].get_output_tensor(i).data.copy() for i in n_out]
            while nxt in ready:
                yield ready.pop(nxt)
                nxt += 1
            finished = True
        except RuntimeError as e:
            raise runtime_error(self.core, self.device, e, "inference") from None
        finally:
            if not finished:  # stopped early or failed: nothing runs on after the caller
                try:
                    q.wait_all()
                except RuntimeError:
                    q = None  # the queue keeps its error: never reused
            if q is not None:
                self._streams.append((q, start, views, reqs))

    def _stream_queue(self) -> tuple[Any, Any, list, list]:
        """An idle callback-free queue for :meth:`stream`, or a new one: (queue, the C++
        start or None, each request's input buffers, the requests, to read outputs)."""
        try:
            return self._streams.pop()
        except IndexError:
            pass
        n = 2 * len(self._async_queue())
        cm = self._variant("throughput", {"PERFORMANCE_HINT": "THROUGHPUT"})
        try:
            q = self._o.ov.AsyncInferQueue(cm, n)
        except RuntimeError as e:
            raise runtime_error(self.core, self.device, e, "creating infer requests") from None
        lean = self._request_inputs(q)
        start, views = lean if lean is not None else (None, None)
        return q, start, views, [q[r] for r in range(n)]

    def _finished(self, request, done) -> None:
        try:
            outs = [request.get_output_tensor(i).data.copy() for i in range(self._n_out)]
        except BaseException as e:  # noqa: BLE001 - it belongs to the caller's future
            done(None, runtime_error(self.core, self.device, e, "inference")
                 if isinstance(e, RuntimeError) else e)
        else:
            done(outs, None)

    # --- variants compiled on demand -------------------------------------------------
    def _variant(self, name: str, extra: dict[str, str]):
        with self._lock:  # two threads asking at once compile it once
            return self._variant_locked(name, extra)

    def _variant_locked(self, name: str, extra: dict[str, str]):
        if name not in self._variants:
            cfg = {**self.config, **extra}
            try:
                cm = self.core.compile_model(self.ov_model, self.device.id, cfg)  # no persistent cache
            except RuntimeError as e:
                raise runtime_error(self.core, self.device, e,
                                    f"compiling the {name} variant") from None
            pipeline.verify(cm, self.info.precision, self.device, cfg, model=self.ov_model)
            self._variants[name] = cm
        return self._variants[name]

    def profile_extras(self, inputs: list[np.ndarray]) -> dict[str, Any]:
        cm = self._variant("profiling", {"PERF_COUNT": "YES"})
        req = cm.create_infer_request()
        try:
            for _ in range(3):  # the first runs include one-time reorders
                req.infer([np.ascontiguousarray(a) for a in inputs])
            counters = req.get_profiling_info()
        except RuntimeError as e:
            raise runtime_error(self.core, self.device, e, "profiling") from None
        executed = [c for c in counters if str(c.status).endswith("EXECUTED")]
        layers = [LayerTime(c.node_name, f"{c.node_type} ({c.exec_type})",
                            c.real_time.total_seconds() * 1e3) for c in executed]
        return {
            "layers": layers,
            "layers_total_ms": sum(l.time_ms for l in layers),
            "layer_timer": "OpenVINO performance counters (PERF_COUNT, real time per executed node)",
            "unavailable": {
                "peak_memory_bytes": "OpenVINO does not report a compiled model's peak memory",
                "energy_j_per_inference": "OpenVINO exposes no energy telemetry",
            },
        }

    def throughput(self, inputs: list[np.ndarray], iterations: int | None,
                   duration_s: float | None) -> dict[str, Any]:
        """benchmark_app's inference-only loop: an AsyncInferQueue of the
        optimal number of requests on a THROUGHPUT-hinted compile (streams)."""
        cm = self._variant("throughput", {"PERFORMANCE_HINT": "THROUGHPUT"})
        o = self._o
        try:
            nireq = int(cm.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            queue = o.ov.AsyncInferQueue(cm, nireq)
            for r in range(len(queue)):
                for i, a in enumerate(inputs):
                    queue[r].set_input_tensor(i, self._tensor(np.array(a, order="C")))
            queue.start_async()  # a first inference: one-time initialisation
            queue.wait_all()
            if iterations is None and duration_s is None:
                duration_s = 10.0
            n, times, in_fly = 0, [], set()
            clock = time.perf_counter
            start = clock()
            while ((iterations and n < iterations) or (duration_s and clock() - start < duration_s)
                   or n % nireq):
                idle = queue.get_idle_request_id()
                if idle in in_fly:
                    times.append(queue[idle].latency)
                else:
                    in_fly.add(idle)
                queue.start_async()
                n += 1
            queue.wait_all()
            total = clock() - start
            times += [queue[i].latency for i in in_fly]
        except RuntimeError as e:
            raise runtime_error(self.core, self.device, e, "throughput inference") from None
        streams = _prop(cm, "NUM_STREAMS")
        bs = int(inputs[0].shape[0]) if inputs and inputs[0].ndim else 1
        ms = np.asarray(times, dtype=float)
        return {
            "throughput_per_s": bs * n / total,
            "latency_ms": {"p50": float(np.median(ms)), "p90": float(np.percentile(ms, 90)),
                           "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()),
                           "min": float(ms.min()), "max": float(ms.max())},
            "iterations": n, "infer_requests": nireq, "streams": streams,
            "duration_s": total,
            "notes": [f"OpenVINO AsyncInferQueue: {nireq} request(s), {streams} stream(s), "
                      "PERFORMANCE_HINT=THROUGHPUT; latency is per request, as benchmark_app reports it"],
        }

    # --- placement -------------------------------------------------------------------
    def placement(self):
        """Each executed layer and its device, from the runtime graph (:mod:`.placement`)."""
        from ..placement_once import once
        from . import placement

        return once(self, lambda: placement.placement(self))

    # --- artifact ---------------------------------------------------------------------
    def write_artifact(self, directory: Path) -> None:
        """IR (model.xml/.bin) always; the compiled blob where the device can
        export one (it is preferred on load when the device matches)."""
        o = self._o
        o.save_model(self.ov_model, directory / "model.xml")
        blob = False
        if self.device.properties.get("export_import"):
            try:
                (directory / "compiled.blob").write_bytes(o.export_blob(self.compiled))
                blob = True
            except RuntimeError:
                blob = False  # the IR alone still restores the model
        (directory / META).write_text(json.dumps({
            "openvino": o.version, "api": "openvino.runtime" if o.legacy else "openvino",
            "device_id": self.device.id, "device_name": self.device.name,
            "config": self.config, "blob": blob}, indent=1))


def _prop(cm, name: str):
    try:
        v = cm.get_property(name)
        return int(v) if str(v).isdigit() else str(v)
    except Exception:  # noqa: BLE001
        return None
