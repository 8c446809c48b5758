"""Every model a conformance run can ask for, by suite, without importing a framework.

Three catalogues feed one list of cases:

* ``quick``: the zoo (:mod:`.models`), five small trained models on scikit-learn's
  digits, judged with labels;
* ``ops``: one case per operator variant (:mod:`.ops`), judged as tensors;
* ``models``: real architectures from transformers with seeded weights
  (:mod:`.architectures`), judged as classifiers without labels.

``full`` is all three. The orchestrator sees names, input specs and how to judge;
workers build the torch modules (:func:`build`) and everyone makes the same data
(:func:`data`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SUITES = ("quick", "ops", "models", "full")
#: samples a case is judged on, and calibrates int8 with, per suite
EVAL_SAMPLES = {"ops": 16, "models": 16}
CALIB_SAMPLES = {"ops": 16, "models": 16}
EVAL_SEED, CALIB_SEED = 1, 2


@dataclass(frozen=True)
class Case:
    """One model under test: its suite, its inputs (one sample each) and how it is judged."""

    name: str
    suite: str  # quick | ops | models
    #: the row group of the coverage matrix: the operator family, "zoo", or the architecture
    family: str
    description: str
    #: per model input: (shape of one sample, numpy dtype name)
    inputs: tuple[tuple[tuple[int, ...], str], ...]
    #: "classifier": logits, judged with top-1 agreement too; "tensor": error size only
    kind: str = "classifier"
    #: the zoo has labels (accuracy is judged); the other suites do not
    labelled: bool = False
    #: torch.export takes a dynamic batch for it
    dynamic_batch: bool = True
    #: static int8 is meaningful (False: integer-only inputs)
    quantizable: bool = True
    blocks: tuple[str, ...] = ()


@lru_cache(maxsize=1)
def catalogue() -> dict[str, Case]:
    """Every case of every suite, in suite order (names are unique across suites)."""
    from .architectures import ARCHITECTURES
    from .models import MODELS
    from .ops import OPS

    out: dict[str, Case] = {}
    for m in MODELS.values():
        out[m.name] = Case(m.name, "quick", "zoo", m.description, ((m.input_shape, "float32"),),
                           labelled=True)
    for c in OPS.values():
        out[c.name] = Case(c.name, "ops", c.op, c.description,
                           tuple((i.shape, i.dtype) for i in c.inputs), kind="tensor",
                           dynamic_batch=c.dynamic_batch, quantizable=c.quantizable)
    for a in ARCHITECTURES.values():
        if a.name in out:
            raise ValueError(f"case name {a.name!r} is used by two catalogues")
        out[a.name] = Case(a.name, "models", a.name, a.description, ((a.input_shape, "float32"),),
                           dynamic_batch=a.dynamic_batch, blocks=a.blocks)
    return out


@lru_cache(maxsize=1)
def _positions() -> dict[str, int]:
    return {n: i for i, n in enumerate(catalogue())}


def position(name: str) -> int:
    """Where a case stands in catalogue order (unknown names last): reports sort by it."""
    pos = _positions()
    return pos.get(name, len(pos))


def select(suite: str, names: list[str] | None = None) -> list[str]:
    """The case names of ``suite`` (``full``: every suite), narrowed to ``names``
    (case names, or operator families); unknown names are a UsageError."""
    from hal import UsageError

    if suite not in SUITES:
        raise UsageError(f"unknown suite {suite!r}", f"use one of: {', '.join(SUITES)}")
    cat = catalogue()
    pool = [n for n, c in cat.items() if suite == "full" or c.suite == suite]
    if not names:
        return pool
    fams = {cat[n].family for n in pool}
    unknown = [n for n in names if n not in pool and n not in fams]
    if unknown:
        shown = ", ".join(pool[:12]) + (", …" if len(pool) > 12 else "")
        raise UsageError(f"unknown model(s) {', '.join(unknown)} in the {suite} suite",
                         f"use one of: {shown} (or --suite full)")
    wanted = set(names)
    return [n for n in pool if n in wanted or cat[n].family in wanted]


def data(name: str) -> dict[str, np.ndarray]:
    """The case's evaluation inputs (``x_eval_<i>``), calibration inputs
    (``x_calib_<i>``) and, for the zoo, labels (``y_eval``); the same on every machine."""
    case = catalogue()[name]
    if case.suite == "quick":
        from .data import model_data

        d = model_data(case.inputs[0][0])
        return {"x_eval_0": d["x_eval"], "x_calib_0": d["x_calib"], "y_eval": d["y_eval"]}
    if case.suite == "ops":
        from .ops import OPS, make_inputs

        ev = make_inputs(OPS[name], EVAL_SAMPLES["ops"], EVAL_SEED)
        cal = make_inputs(OPS[name], CALIB_SAMPLES["ops"], CALIB_SEED)
    else:
        from .architectures import images

        shape = case.inputs[0][0]
        ev = [images(EVAL_SAMPLES["models"], EVAL_SEED, shape)]
        cal = [images(CALIB_SAMPLES["models"], CALIB_SEED, shape)]
    return {**{f"x_eval_{i}": a for i, a in enumerate(ev)},
            **{f"x_calib_{i}": a for i, a in enumerate(cal)}}


def inputs_of(d, split: str) -> list[np.ndarray]:
    """``x_<split>_0, x_<split>_1, …`` from a :func:`data` dict or npz."""
    out, i = [], 0
    while f"x_{split}_{i}" in d:
        out.append(d[f"x_{split}_{i}"])
        i += 1
    return out


def build(name: str):
    """The case's torch module (imports torch; workers only)."""
    case = catalogue()[name]
    if case.suite == "quick":
        from . import zoo

        return zoo.build(name)
    if case.suite == "ops":
        from .ops import OPS

        return OPS[name].build()
    from .architectures import ARCHITECTURES

    return ARCHITECTURES[name].build()
