"""The lab driver: the conformance suite over every node of a Ray cluster.

Each node advertises its devices as Ray resources (``probe.resources``). For every
device on every node that advertises it, the driver starts one actor
(:class:`~hal_conformance.lab.node.DeviceRunner`) that holds the device's resource and
runs that device's backend in the node's own worker process. A device's cells are
shared out evenly among the nodes that have it, and a node that runs out takes from
the busiest; the cross-check cells run on every one of them. A node lost mid-run
gives its unfinished cells back, for another node with the device; where none is
left they are ``lost`` with the host and why. A node runs as many devices at once as
it has CPUs in Ray (the local one: ``-j``).

It is an executor (:class:`~hal_conformance.execute.Executor`): the run plans with the
one planner (:func:`~hal_conformance.plan.plan`) from the devices the nodes report,
keeps the references (the fp64 oracle on this host, or goldens), judges every outcome
with :func:`~hal_conformance.judge.judge` and rewrites the JSON report as cells arrive,
so nothing a node finished is lost with it.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np

import hal
from hal.errors import brief

from .. import onnx_nodes
from ..options import Options
from ..plan import CellSpec, Kind
from ..protocol import DeviceInfo, Outcome, Status
from ..results import CellResult, Reason, Report, Result
from ..runner import Suite
from . import cluster as cl
from .consistency import compare_copies, compare_precisions
from .probe import device_resource, kind_resource

#: what runs on every node that has a device, besides the device's share of the cells
CROSS_CHECK = ("none", "first", "all")
#: the driver polls Ray this often (seconds)
POLL_S = 0.5
#: a node whose actor connection broke must answer a ping within this (seconds)
NODE_ANSWER_S = 10.0


def _ping() -> bool:
    return True


@dataclass
class Device:
    """One device target (and kind) and its cells, over every node that has it."""

    target: str
    kind: str
    backend: str
    specs: list[CellSpec] = field(default_factory=list)
    #: runnable cells no runner holds (given back by a lost node, or never shared out)
    shared: deque = field(default_factory=deque)
    #: cells every runner of this device runs (cross-host comparison)
    checks: list[CellSpec] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    #: cell id → host → (its judged result, its outputs)
    copies: dict[str, dict[str, tuple[CellResult, np.ndarray | None]]] = field(default_factory=dict)
    #: the last loss of a node that had this device: (host, reason)
    last_loss: tuple[str, str] | None = None
    #: host → precision → why that host cannot run it (None: it can)
    unsupported: dict[str, dict[str, str | None]] = field(default_factory=dict)


@dataclass
class Runner:
    """One device on one node."""

    device: Device
    node: cl.Node
    #: this node's share of the device's cells (others take from its end when idle)
    own: deque = field(default_factory=deque)
    #: the device's cross-check cells, which every node with it runs
    private: deque = field(default_factory=deque)
    state: str = "waiting"  # waiting → starting → ready → closing → closed | lost
    actor: Any = None
    future: Any = None
    current: CellSpec | None = None
    deadline: float = 0.0
    #: how long the driver waits for the pending answer
    window: float = 0.0
    worker_starts: int = 0

    @property
    def host(self) -> str:
        return self.node.host

    @property
    def live(self) -> bool:
        return self.state in ("waiting", "starting", "ready") and self.node.alive


class Lab:
    """A conformance run over a Ray cluster: ``opts.cluster`` is the head's
    ``host:port`` or ``local``; ``opts.cross_check`` says which cells run on every
    host that has the device (none | first: each model's first runnable precision | all);
    ``opts.jobs`` (``local`` only) is how many devices run at once. The run is the
    single-host one (same plan, oracle, judge, report) with a :class:`RayExecutor`."""

    def __init__(self, opts: Options,
                 on_cell: Callable[[CellResult], None] | None = None,
                 on_note: Callable[[str], None] | None = None) -> None:
        if opts.cross_check not in CROSS_CHECK:
            raise hal.UsageError(f"unknown cross-check {opts.cross_check!r}",
                                 f"use one of: {', '.join(CROSS_CHECK)}")
        self.opts = opts
        self.on_cell = on_cell
        self.on_note = on_note
        #: the running executor (its runners say which node holds which cell), for callbacks
        self.executor: RayExecutor | None = None

    def run(self) -> Report:
        conn = cl.connect(self.opts.cluster or "local", num_cpus=self.opts.parallel)

        def executor(suite: Suite) -> RayExecutor:
            self.executor = RayExecutor(suite, conn.address)
            return self.executor

        try:
            return Suite(self.opts, self.on_cell, self.on_note, executor=executor).run()
        finally:
            conn.close()


class RayExecutor:
    """The cells over every node that has their device: placement, sharing, lost-node
    reruns and cross-host checks. Planning and judging are the run's."""

    def __init__(self, suite: Suite, address: str) -> None:
        self.suite = suite
        self.opts = suite.opts
        self.address = address
        self.on_note = suite.note
        self.devices_: dict[tuple[str, str], Device] = {}
        self.runners: list[Runner] = []
        self.futures: dict[Any, Runner] = {}
        self.rerun_from: dict[str, str] = {}
        self.losses: list[dict[str, Any]] = []
        self.nodes: list[cl.Node] = []
        self.onnx_chunks = onnx_nodes.chunks(suite.onnx_cases)
        self.onnx_index = {n: i for i, n in enumerate(suite.onnx_cases)}
        self.refs: dict[str, Any] = {}
        self.t0 = time.time()

    @property
    def report(self) -> Report:
        return self.suite.report

    # --- the executor protocol --------------------------------------------------------------
    def devices(self) -> list[DeviceInfo]:
        """Every node's probe into the report; one record per device target (the first
        host's, by name), each knowing what every other host with it can run."""
        self.nodes = cl.nodes()
        self.report.meta["lab"] = {"address": self.address, "cross_check": self.opts.cross_check,
                                   "hosts": {}, "consistency": [], "losses": self.losses, "reruns": []}
        self._hosts()
        return self._found()

    def run(self, specs: list[CellSpec]) -> None:
        ray = cl.ray_module()
        self._share(specs)
        self._start_waiting()  # nodes start their workers while the oracle runs here
        self.refs = self.suite.references()
        self.data = {m: ray.put(ref.data_path.read_bytes()) for m, ref in self.refs.items()}
        self.onnx = {m: ray.put(ref.onnx_path.read_bytes()) for m, ref in self.refs.items()
                     if ref.onnx_path}
        self.suite.workers.close_all(remove=False)  # the oracle's workers: not needed any more
        self._loop()
        self._consistency()

    def close(self) -> None:
        ray = cl.ray_module()
        for rn in self.runners:
            if rn.actor is not None and rn.state not in ("closed", "lost"):
                ray.kill(rn.actor, no_restart=True)
        lab = self.report.meta.get("lab")
        for n in self.nodes:
            if lab and not n.alive and n.host in lab["hosts"]:
                lab["hosts"][n.host].update(alive=False, error=n.error)

    # --- hosts and plan -------------------------------------------------------------------
    def _hosts(self) -> None:
        """Each host's versions and devices into the report; backends keyed name@host."""
        r = self.report
        r.plugins = []
        wanted = self._wanted_backends()
        for n in self.nodes:
            entry = n.to_dict()
            if n.error or not n.info:
                r.errors.append(f"host {n.host} ({n.ip}): {n.error}")
                self.on_note(f"host {n.host}: {n.error}")
                r.meta["lab"]["hosts"][n.host] = entry
                continue
            info = n.info
            entry.update({k: info.get(k) for k in ("hostname", "hal_version", "python", "machine",
                                                    "platform", "cpu_count", "source")})
            entry["plugins"] = info["plugins"]
            entry["backends"] = {b: {"version": v.get("version"), "missing_runtime": v.get("missing_runtime"),
                                     "error": v.get("error")} for b, v in info["backends"].items()}
            r.meta["lab"]["hosts"][n.host] = entry
            r.plugins += [{**p, "host": n.host} for p in info["plugins"]]
            for name, b in info["backends"].items():
                if wanted is not None and name not in wanted:
                    continue
                r.backends[f"{name}@{n.host}"] = {
                    "host": n.host, "version": b.get("version"), "missing_runtime": b.get("missing_runtime"),
                    "error": b.get("error"), "description": b.get("description"),
                    "devices": [{**{k: d.get(k) for k in ("target", "name", "kind", "available",
                                                          "reason")}, "host": n.host}
                                for d in b.get("devices") or ()]}
            probed = {d["target"]: d for b in info["backends"].values() for d in b.get("devices") or ()
                      if d.get("available")}
            for t in sorted(set(probed) - set(n.devices)):
                self.on_note(f"{n.host} has {t} but does not advertise it to Ray, so no cell runs "
                             "there: restart its node with `ray start … --resources "
                             "\"$(python -m hal_conformance.lab resources)\"`")
            for t in sorted(set(n.devices) - set(probed)):
                r.errors.append(f"host {n.host} advertises {t} but its probe finds no such "
                                "available device (restart its node with the current resources)")
            if n.devices and n.slots < 1:
                self.on_note(f"{n.host} advertises devices but has no CPU in Ray, so it runs none "
                             "(give it `ray start --num-cpus N`)")

    def _wanted_backends(self) -> set[str] | None:
        if not self.opts.backends:
            return None
        return {b.partition(":")[0] for b in self.opts.backends}

    def _found(self) -> list[DeviceInfo]:
        """Every advertised device on some node, and one runner per node that has it."""
        wanted = self._wanted_backends()
        found: set[str] = set()
        infos: dict[tuple[str, str], DeviceInfo] = {}
        for n in self.nodes:
            if not n.info:
                continue
            found |= set(n.info["backends"])
            probed = {d["target"]: DeviceInfo.from_dict({**d, "host": n.host}, name)
                      for name, b in n.info["backends"].items()
                      for d in b.get("devices") or () if d.get("available")}
            for t in n.devices:
                if t not in probed or (wanted is not None and probed[t].backend not in wanted):
                    continue
                d = probed[t]
                key = (t, d.kind)
                dev = self.devices_.get(key)
                if dev is None:
                    dev = self.devices_[key] = Device(t, d.kind, d.backend)
                    infos[key] = d  # nodes come sorted by host: the first host's record
                dev.unsupported[n.host] = {p: (w.message if w else None) for p, w in d.unsupported.items()}
                if n.slots >= 1:
                    self.runners.append(Runner(dev, n))
        for b in sorted((wanted or set()) - found):
            raise hal.UsageError(f"no host of the cluster has a backend called {b!r}",
                                 f"hosts have: {', '.join(sorted(found)) or 'none'}")
        return [infos[k] for k in sorted(infos)]

    def _share(self, specs: list[CellSpec]) -> None:
        """Each device's runnable cells, shared out evenly among the nodes that have it;
        the cross-check cells go to every one of them."""
        for spec in specs:
            self.devices_[(spec.target, spec.device.kind)].specs.append(spec)
        for dev in sorted(self.devices_.values(), key=lambda d: d.target):
            hosts = sorted(dev.unsupported)
            runnable = dev.specs
            mine = [rn for rn in self.runners if rn.device is dev]
            if len(mine) > 1 and self.opts.cross_check != "none":
                for m in dict.fromkeys(s.model for s in runnable if s.kind == Kind.TORCH):
                    ms = [s for s in runnable if s.model == m]
                    dev.checks += ms[:1] if self.opts.cross_check == "first" else ms
            check_ids = {s.id for s in dev.checks}
            rest = [s for s in runnable if s.id not in check_ids]
            mine.sort(key=lambda rn: rn.host)
            for i, spec in enumerate(rest):  # an even share each; the idle take from the busy
                (mine[i % len(mine)].own if mine else dev.shared).append(spec)
            for rn in mine:
                rn.private = deque(dev.checks)
            mismatch = compare_precisions(dev.target, dev.kind, dev.unsupported)
            if mismatch:
                self.report.meta["lab"]["consistency"].append(mismatch)
                self.report.errors.append(mismatch["why"])
            if not mine:
                self._abandon(dev, Status.ERROR, "no node that advertises it has a CPU in Ray to run it")
            self.on_note(f"{dev.target} ({dev.kind}) on {', '.join(hosts)}: {len(runnable)} "
                         f"runnable cells" + (f", {len(dev.checks)} run on every host"
                                              if dev.checks else ""))

    # --- scheduling -----------------------------------------------------------------------
    def _busy(self, node: cl.Node) -> int:
        return sum(1 for rn in self.runners if rn.node is node and rn.state in ("starting", "ready",
                                                                                "closing"))

    def _has_work(self, rn: Runner) -> bool:
        return bool(rn.own or rn.private or rn.device.shared or self._victim(rn))

    def _victim(self, rn: Runner) -> Runner | None:
        """The runner of the same device with the most cells still its own."""
        others = [o for o in self.runners if o is not rn and o.device is rn.device and o.own]
        return max(others, key=lambda o: len(o.own), default=None)

    def _start_waiting(self) -> None:
        """Start runners on nodes with a free slot: devices no other node has first."""
        ray = cl.ray_module()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from .node import DeviceRunner

        remote = ray.remote(DeviceRunner)
        for node in self.nodes:
            waiting = [rn for rn in self.runners if rn.node is node and rn.state == "waiting"]
            if not node.alive:
                continue
            for rn in sorted(waiting, key=lambda rn: (self._spread(rn.device), rn.device.target)):
                if not self._has_work(rn):
                    rn.state = "closed"
                    continue
                if self._busy(node) >= node.slots:
                    break
                dev = rn.device
                rn.actor = remote.options(
                    num_cpus=1, max_restarts=0, max_task_retries=0,
                    resources={device_resource(dev.target): 1, kind_resource(dev.kind): 1},
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
                ).remote(dev.backend, dev.target, self.opts.startup_s, self.opts.timeout_s)
                rn.state = "starting"
                self._await(rn, rn.actor.start.remote(), self.opts.startup_s + 120)

    def _spread(self, dev: Device) -> int:
        return sum(1 for rn in self.runners if rn.device is dev and rn.live)

    def _await(self, rn: Runner, future: Any, within_s: float) -> None:
        rn.future = future
        rn.window = within_s
        rn.deadline = time.monotonic() + within_s
        self.futures[future] = rn

    def _loop(self) -> None:
        ray = cl.ray_module()
        while True:
            self._start_waiting()
            if not self.futures:
                break
            ready, _ = ray.wait(list(self.futures), num_returns=1, timeout=POLL_S)
            for f in ready:
                rn = self.futures.pop(f)
                try:
                    res = ray.get(f, timeout=30)
                except Exception as e:  # noqa: BLE001 - the actor or its node is gone
                    self._lost(rn, e)
                    continue
                self._answer(rn, res)
            now = time.monotonic()
            for f, rn in list(self.futures.items()):
                if now > rn.deadline:
                    del self.futures[f]
                    ray.kill(rn.actor, no_restart=True)
                    self._lost(rn, TimeoutError(f"no answer from {rn.host} within {rn.window:.0f}s"))
        for dev in self.devices_.values():  # nothing is left running: whatever is not done, says why
            why = dev.last_loss[1] if dev.last_loss else "no node could run it"
            self._abandon(dev, Status.LOST if dev.last_loss else Status.ERROR, why, retry=False)

    def _answer(self, rn: Runner, res: dict[str, Any]) -> None:
        ray = cl.ray_module()
        if rn.state == "starting":
            if res.get("error"):
                msg = f"{rn.device.target} on {rn.host}: {res['error']}"
                self.report.errors.append(msg)
                self.on_note(msg)
                rn.state = "lost"
                ray.kill(rn.actor, no_restart=True)
                self._give_back(rn)
                self._abandon(rn.device, Status.ERROR, res["error"])
                return
            rn.state = "ready"
            self._dispatch(rn)
            return
        if rn.state == "closing":
            rn.state = "closed"
            rn.worker_starts = res if isinstance(res, int) else rn.worker_starts
            self._count_starts(rn)
            ray.kill(rn.actor, no_restart=True)
            return
        spec, rn.current = rn.current, None
        rn.worker_starts = res.get("worker_starts", rn.worker_starts)
        self._dispatch(rn)  # keep the device busy while this one is judged
        if spec.kind == Kind.ONNX_NODE:
            done = onnx_nodes.outcome(res["record"]) if res.get("record") else Outcome(
                Status.ERROR, "the ONNX worker returned no result for this case")
        else:
            done = Outcome.from_dict(res["done"])
            done.outputs = res.get("out")
        self._finish(rn, spec, done)

    def _dispatch(self, rn: Runner) -> None:
        dev = rn.device
        victim = self._victim(rn)
        if rn.private:  # the cross-checks first: what the hosts compare is there early
            spec = rn.private.popleft()
        elif rn.own:
            spec = rn.own.popleft()
        elif dev.shared:
            spec = dev.shared.popleft()
        elif victim is not None:
            spec = victim.own.pop()
        else:
            spec = None
        if spec is None:
            rn.state = "closing"
            self._await(rn, rn.actor.close.remote(), 60)
            return
        rn.current = spec
        pre = self.suite.unrun(spec)
        if pre is not None:  # recorded as the single-host run does, without running
            rn.current = None
            self._finish(rn, spec, pre)
            self._dispatch(rn)
            return
        within = self.opts.startup_s + 2 * self.opts.timeout_s + 60
        if spec.kind == Kind.ONNX_NODE:  # its chunk runs once on the node, on first need
            chunk = self.onnx_chunks[self.onnx_index[spec.model] // onnx_nodes.CHUNK]
            self._await(rn, rn.actor.onnx_case.remote(chunk, spec.model, self.opts.timeout_s),
                        within + len(chunk) * self.opts.timeout_s)
            return
        cmd = spec.command("", "").to_dict()  # the node fills in where its files are
        self._await(rn, rn.actor.cell.remote(cmd, self.data[spec.model], self.onnx.get(spec.model)),
                    within)

    def _finish(self, rn: Runner, spec: CellSpec, done: Outcome) -> None:
        dev = rn.device
        done.host = rn.host
        cell = self.suite.judge(spec, done)
        if spec.id in {s.id for s in dev.checks}:
            dev.copies.setdefault(spec.id, {})[rn.host] = (cell, done.outputs)
        if spec.id not in dev.done:
            self._record(dev, spec, cell, rn.host)

    def _record(self, dev: Device, spec: CellSpec, cell: CellResult, host: str) -> None:
        cell.host = host
        if spec.id in self.rerun_from and cell.result != Result.LOST:
            cell.notes.append(f"rerun on {host} after {self.rerun_from[spec.id]} was lost")
            self.report.meta["lab"]["reruns"].append(
                {"cell": spec.id, "from": self.rerun_from[spec.id], "to": host})
        dev.done.add(spec.id)
        self.suite.record(cell)

    def _count_starts(self, rn: Runner) -> None:
        e = self.report.backends.get(f"{rn.device.backend}@{rn.host}")
        if e is not None:
            e["worker_starts"] = e.get("worker_starts", 0) + rn.worker_starts

    # --- losses ---------------------------------------------------------------------------
    def _lost(self, rn: Runner, err: BaseException) -> None:
        """An actor is gone (its node, its process) or did not answer in time."""
        node = rn.node
        if node.alive:
            how = self._node_gone(node)
            if how:
                node.alive = False
                node.error = f"{node.host} left the cluster ({how})"
        why = node.error if not node.alive else (
            f"the runner for {rn.device.target} on {node.host} is gone ({brief(err, 240, typed=True)})")
        was = rn.state
        rn.state = "lost"
        cl.ray_module().kill(rn.actor, no_restart=True)
        self.on_note(f"lost: {why}")
        loss = {"host": node.host, "target": rn.device.target, "after_s": round(time.time() - self.t0, 2),
                "reason": why, "while": was, "in_flight": rn.current.id if rn.current else None}
        self.losses.append(loss)
        rn.device.last_loss = (node.host, why)
        if was == "closing":
            self._count_starts(rn)
        self._give_back(rn)
        for other in self.runners:
            if other.node is node and other.state == "waiting":
                other.state = "lost"
                self._give_back(other)
        self._abandon(rn.device, Status.LOST, why)
        for other in self.runners:
            if other.node is node and other.device is not rn.device and other.state != "closed":
                other.device.last_loss = (node.host, why)
                self._abandon(other.device, Status.LOST, why)
        # not an error of the run by itself: what it cost is in the cells (rerun, or lost)
        self.suite.sink.write(self.report)

    def _node_gone(self, node: cl.Node) -> str | None:
        """Why a node is gone, or None when it still answers (only the actor died).
        Ray marks a dead node only after its health checks fail (3 s × 5 by default),
        while an actor's broken connection shows at once: so ask the node itself."""
        ray = cl.ray_module()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        try:
            if not any(n["NodeID"] == node.node_id and n["Alive"] for n in ray.nodes()):
                return "Ray marks its node dead"
            ping = ray.remote(_ping).options(num_cpus=0, max_retries=0, scheduling_strategy=
                                             NodeAffinitySchedulingStrategy(node.node_id, soft=False))
            ray.get(ping.remote(), timeout=NODE_ANSWER_S)
            return None
        except ray.exceptions.TaskUnschedulableError:
            return "Ray no longer has its node"
        except ray.exceptions.GetTimeoutError:
            return f"its node did not answer within {NODE_ANSWER_S:g} s"
        except Exception as e:  # noqa: BLE001 - no answer is the answer
            return f"its node does not answer: {brief(e, 160, typed=True)}"

    def _give_back(self, rn: Runner) -> None:
        """A runner's unfinished cells go back to its device's queue, for another node."""
        dev = rn.device
        others = [o for o in self.runners if o is not rn and o.device is dev and o.live]
        pending = ([rn.current] if rn.current else []) + list(rn.own) + list(rn.private)
        rn.current = None
        rn.own.clear()
        rn.private.clear()
        for spec in reversed(pending):
            if spec.id in dev.done or any(spec in o.private for o in others):
                continue
            dev.shared.appendleft(spec)
            self.rerun_from.setdefault(spec.id, rn.host)

    def _abandon(self, dev: Device, result: Status, why: str, retry: bool = True) -> None:
        """When no runner is left for a device's remaining cells: start a new one on a
        node that has the device (its runner done), else record them with why."""
        if any(rn.device is dev and rn.live for rn in self.runners):
            return
        left = [s for s in dev.specs if not s.unsupported and s.id not in dev.done]
        if not left:
            return
        for node in self.nodes if retry else ():
            if node.alive and node.slots >= 1 and any(
                    rn.device is dev and rn.node is node and rn.state == "closed" for rn in self.runners):
                self.runners.append(Runner(dev, node))
                return
        host = dev.last_loss[0] if dev.last_loss and result == Status.LOST else ""
        for spec in left:
            cell = self.suite.judge(spec, Outcome(result, f"{why}; no other host with {dev.target} "
                                                  f"is left to run it", reason=Reason.HOST_LOST
                                                  if result == Status.LOST else Reason.NO_ANSWER))
            self._record(dev, spec, cell, self.rerun_from.get(spec.id) or host)
        dev.shared.clear()

    # --- cross-host ----------------------------------------------------------------------
    def _consistency(self) -> None:
        lab = self.report.meta["lab"]
        for dev in sorted(self.devices_.values(), key=lambda d: d.target):
            for spec in dev.checks:
                copies = dev.copies.get(spec.id, {})
                hosts = sorted({rn.host for rn in self.runners if rn.device is dev})
                ref = self.refs.get(spec.model)
                if ref is None:
                    continue
                entry = compare_copies(dev.target, dev.kind, spec, copies, hosts, ref.outputs,
                                       self._versions(dev))
                lab["consistency"].append(entry)
                if not entry["agree"]:
                    self.report.errors.append(entry["why"])
                    self.on_note(entry["why"])

    def _versions(self, dev: Device) -> dict[str, Any]:
        return {n.host: n.info["backends"][dev.backend].get("version") for n in self.nodes
                if n.info and dev.backend in n.info["backends"]}
