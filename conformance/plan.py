"""The planner: which cells a run has, from its options and the devices installed.

:func:`plan` is pure: the same options and devices give the same cells, in the same
order, whether the devices are this host's workers or a lab's nodes. It owns the suites
and their filters, routers (quick tier only), the dynamic-batch axis, ONNX's node cells,
the integer-input rule and what each cell measures; each :class:`CellSpec` carries its
whole worker command, so no executor builds one by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

from . import cases, onnx_nodes
from .options import Options
from .policy import JUDGED_PRECISIONS
from .protocol import CellCommand, DeviceInfo, Refusal
from .results import Reason


class Kind(str, Enum):
    """What runs a cell: a backend's conformance worker, or ONNX's node-test runner."""

    TORCH = "torch"
    ONNX_NODE = "onnx-node"

    def __str__(self) -> str:
        return self.value


class Shapes(str, Enum):
    #: compiled at the example's batch
    STATIC = "static"
    #: compiled from a program whose batch is a torch.export Dim, run at batches 1, 3, 8
    DYNAMIC = "dynamic"

    def __str__(self) -> str:
        return self.value


#: a cell's cost by suite before any is measured, in operator cells (the schedulers' prior)
COST = {"quick": 3.0, "ops": 1.0, "models": 30.0, onnx_nodes.SUITE: 0.15}


@dataclass
class CellSpec:
    """One cell to run: device × model × precision (× shapes), and how."""

    backend: str
    device: DeviceInfo
    model: str
    precision: str
    #: why it cannot run here (recorded without running)
    unsupported: Refusal | None = None
    shapes: Shapes = Shapes.STATIC
    kind: Kind = Kind.TORCH
    #: what the worker measures besides the outputs
    profile: bool = False
    roundtrip: bool = False
    shared_export: bool = False
    suite: str = field(default="")
    family: str = field(default="")

    def __post_init__(self) -> None:
        if isinstance(self.device, dict):
            self.device = DeviceInfo.from_dict(self.device, self.backend)
        self.unsupported = Refusal.of(self.unsupported)
        self.shapes, self.kind = Shapes(self.shapes), Kind(self.kind)
        if not self.suite:
            case = cases.catalogue().get(self.model)
            self.suite = case.suite if case else onnx_nodes.SUITE
            self.family = case.family if case else onnx_nodes.cases().get(self.model, "?")

    @property
    def id(self) -> str:
        return f"{self.device.target}/{self.model}/{self.precision}" + (
            "@dynamic" if self.shapes == Shapes.DYNAMIC else "")

    @property
    def target(self) -> str:
        return self.device.target

    @property
    def cost(self) -> float:
        return COST.get(self.suite, 1.0)

    def command(self, data: str, out: str, onnx: str | None = None) -> CellCommand:
        """The worker's command, with the files where the executor keeps them."""
        return CellCommand(self.id, self.device.target, self.model, self.precision,
                           self.shapes.value, self.profile, self.roundtrip, self.shared_export,
                           data, out, onnx)


# --- options -----------------------------------------------------------------------------
def select(suite: str, names: list[str] | None) -> tuple[list[str], list[str]]:
    """The suite's torch cases and its ONNX node cases. The operator tier (``ops``, and
    ``full``) includes ONNX's node corpus; ``-m onnx`` names it, ``-m onnx:Conv`` one
    operator of it, next to other names or alone."""
    from hal import UsageError
    from hal.plugin import missing

    names = list(names or [])
    sel = [n for n in names if n == onnx_nodes.SELECTOR or n.startswith(onnx_nodes.SELECTOR + ":")]
    rest = [n for n in names if n not in sel]
    if sel and suite not in ("ops", "full"):
        raise UsageError(f"ONNX's node corpus is part of the ops suite, not {suite}",
                         "add --suite ops (or full)")
    models = cases.select(suite, rest) if rest or not names else []
    if suite not in ("ops", "full") or (names and not sel) or missing(("onnx",)):
        return models, []
    return models, onnx_nodes.select(sel)


def precisions(names: list[str] | None) -> list[str]:
    """The judged precisions asked for, in policy order (a UsageError for unknown ones)."""
    from hal import UsageError

    if not names:
        return list(JUDGED_PRECISIONS)
    bad = [p for p in names if p not in JUDGED_PRECISIONS]
    if bad:
        raise UsageError(f"unknown precision(s) {', '.join(bad)}",
                         f"use one of: {', '.join(JUDGED_PRECISIONS)}")
    return [p for p in JUDGED_PRECISIONS if p in names]


def wanted(names: list[str] | None, known, hint: str = "") -> dict[str, set[str] | None]:
    """backend → device targets to run (None: all of its devices); ``known``: the
    backends there are (a UsageError names any other)."""
    from hal import UsageError

    for b in {n.partition(":")[0] for n in names or ()} - set(known):
        raise UsageError(f"no installed backend is called {b!r}",
                         f"use one of: {', '.join(known) or 'none installed'}" + hint)
    return _filter(names) if names else {n: None for n in known}


def _filter(names: list[str] | None) -> dict[str, set[str] | None]:
    out: dict[str, set[str] | None] = {}
    for n in names or ():
        b, _, dev = n.partition(":")
        if dev:
            if out.get(b, set()) is not None:
                out.setdefault(b, set()).add(n.lower())  # device ids match case-blind
        else:
            out[b] = None
    return out


def chosen(opts: Options, devices: list[DeviceInfo]) -> list[DeviceInfo]:
    """The available devices the backend filter keeps, in the order given."""
    want = _filter(opts.backends)
    return [d for d in devices if d.available and (not want or d.backend in want)
            and (not want or want[d.backend] is None or d.target.lower() in want[d.backend])]


def routed(device: DeviceInfo, devices: list[DeviceInfo]) -> bool:
    """A router (AUTO, data parallel) whose devices are in this run: it runs the quick tier
    only, which checks the routing; the deep tiers would run every cell twice."""
    ids = {d.id for d in devices if d.backend == device.backend}
    return bool(device.routes_to) and set(device.routes_to) <= ids


# --- the plan ----------------------------------------------------------------------------
def plan(opts: Options, devices: list[DeviceInfo]) -> list[CellSpec]:
    """Every cell of the run on ``devices`` (unsupported ones included, with why)."""
    models, onnx_cases = select(opts.suite, opts.models)
    precs = precisions(opts.precisions)
    cat = cases.catalogue()
    run = chosen(opts, devices)
    specs: list[CellSpec] = []
    for d in run:
        quick_only = routed(d, run)
        mine = [m for m in models if cat[m].suite == "quick"] if quick_only else models
        for m in mine:
            case = cat[m]
            for p in precs:
                why = d.unsupported.get(p)
                if why is None and p == "int8" and not case.quantizable:
                    why = Refusal(Reason.INTEGER_INPUTS, f"{m} takes integer inputs only: static "
                                  "int8 calibration does not apply")
                spec = _torch_cell(opts, d, m, p, why)
                specs.append(spec)
                # the shape axis at fp32: each precision's own path is checked statically
                if case.suite == "models" and case.dynamic_batch and p == "fp32":
                    dyn = why or (None if d.dynamic_batch else Refusal(
                        Reason.NO_DYNAMIC_BATCH, f"the {d.backend} backend declares no dynamic batch"))
                    specs.append(replace(spec, unsupported=dyn, shapes=Shapes.DYNAMIC))
        if onnx_cases and d.takes_onnx and not quick_only:
            specs += [CellSpec(d.backend, d, n, onnx_nodes.PRECISION, kind=Kind.ONNX_NODE)
                      for n in onnx_cases]
    return specs


def _torch_cell(opts: Options, d: DeviceInfo, model: str, precision: str,
                why: Refusal | None) -> CellSpec:
    suite = cases.catalogue()[model].suite
    # latency is part of the quick tier's report; the operator and architecture tiers are
    # about correctness, and 0.2 s per cell would add minutes. save → load → rerun
    # recompiles on most backends: every zoo cell checks it, the architectures at fp32,
    # the operator cases not (their artifacts are the zoo's formats; it would double the
    # tier). The deep tiers compile from one shared torch.export per model.
    return CellSpec(d.backend, d, model, precision, why,
                    profile=opts.profile and suite == "quick",
                    roundtrip=suite == "quick" or (suite == "models" and precision == "fp32"),
                    shared_export=suite != "quick")


def oracle_cell(device: DeviceInfo, model: str, precision: str) -> CellSpec:
    """The oracle's cell for a model: outputs only, nothing timed or saved."""
    return CellSpec(device.backend, device, model, precision)


def counts(specs: list[CellSpec]) -> dict[str, int]:
    """Planned cells per suite (progress and the ETA)."""
    out: dict[str, int] = {}
    for s in specs:
        out[s.suite] = out.get(s.suite, 0) + 1
    return out


__all__ = ["COST", "CellSpec", "Kind", "Shapes", "chosen", "counts", "oracle_cell", "plan",
           "precisions", "routed", "select", "wanted"]

