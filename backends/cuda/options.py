"""The CUDA backend's compile options and recipe (no torch import here).

A :class:`Recipe` is everything that shapes how a saved program is rebuilt on a
GPU; it is written next to the program as ``recipe.json`` so that ``hal.load``
(and a compile-cache hit) rebuilds exactly the executable that was compiled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from hal import UsageError
from hal.plugin import Option

#: precisions the backend runs; fp16/bf16 need a GPU that has them (see devices.py).
PRECISIONS = ("fp32", "fp16", "bf16")
#: modes ``torch.compile`` took in the torch this was written against; checked
#: again against ``torch._inductor.list_mode_options()`` at compile time.
KNOWN_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs",
                       "lite")
#: modes that already capture CUDA graphs (cudagraph trees) themselves.
GRAPHING_MODES = ("reduce-overhead", "max-autotune")
OPTION_KEYS = ("torch_compile", "cuda_graphs", "tf32")
RECIPE_VERSION = 1
#: the declaration the core checks ``options={...}`` against; :func:`parse` adds the rules
#: that relate two options or an option and the precision
OPTIONS = {
    "torch_compile": Option("torch.compile mode (one of " + ", ".join(KNOWN_COMPILE_MODES)
                            + ", or True); default eager", (str, bool, type(None)),
                            check=lambda v: None if v in (None, True, False) or v in KNOWN_COMPILE_MODES
                            else f"is {str(v)[:30]!r}, not a torch.compile mode"),
    "cuda_graphs": Option("capture one CUDA graph per input shape and replay it (bool)", bool),
    "tf32": Option("allow TF32 tensor cores for fp32 (bool, default False: IEEE fp32)", bool),
}


@dataclass(frozen=True)
class Recipe:
    precision: str = "fp32"
    #: ``torch.compile`` mode, or ``None`` for eager.
    torch_compile: str | None = None
    #: capture one CUDA graph per input shape and replay it.
    cuda_graphs: bool = False
    #: allow TF32 tensor cores for fp32 matmuls/convolutions (off = IEEE fp32).
    tf32: bool = False
    #: the saved program takes any batch size (dimension 0).
    dynamic_batch: bool = False
    version: int = RECIPE_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        """Rebuild from an artifact's (untrusted) ``recipe.json``: every field passes
        the checks a caller's options pass (:func:`parse`), so no mode or flag
        reaches torch that the user could not have asked for."""
        d = json.loads(text)
        if not isinstance(d, dict) or d.get("version") != RECIPE_VERSION:
            raise UsageError(f"CUDA recipe version {str(d.get('version') if isinstance(d, dict) else d)[:20]} "
                             f"is not {RECIPE_VERSION}", "recompile the model with this version of hal")
        unknown = sorted(str(k)[:30] for k in d if k not in cls.__dataclass_fields__)
        if unknown or d.get("precision") not in PRECISIONS or \
                not isinstance(d.get("dynamic_batch", False), bool):
            raise UsageError(f"CUDA recipe has unknown fields {unknown[:3]} or a bad precision or "
                             "dynamic_batch", "recompile the model")
        recipe = parse(d["precision"], {k: d[k] for k in OPTION_KEYS if k in d})
        return replace(recipe, dynamic_batch=d.get("dynamic_batch", False))

    def options(self) -> dict[str, Any]:
        return {"torch_compile": self.torch_compile, "cuda_graphs": self.cuda_graphs,
                "tf32": self.tf32}


def parse(precision: str, options: dict[str, Any] | None) -> Recipe:
    """Validate user options; every bad value is one clear UsageError."""
    opts = dict(options or {})
    unknown = sorted(set(opts) - set(OPTION_KEYS))
    if unknown:
        raise UsageError(f"unknown CUDA option(s) {unknown}",
                         f"the cuda backend takes {', '.join(OPTION_KEYS)}")
    mode = opts.get("torch_compile")
    if mode is True:
        mode = "default"
    elif mode is False:
        mode = None
    if mode is not None and (not isinstance(mode, str) or mode not in KNOWN_COMPILE_MODES):
        raise UsageError(f"torch_compile={mode!r} is not a torch.compile mode",
                         f"use None, True or one of {', '.join(KNOWN_COMPILE_MODES)}")
    flags = {}
    for key in ("cuda_graphs", "tf32"):
        v = opts.get(key, False)
        if not isinstance(v, bool):
            raise UsageError(f"option {key}={v!r} is not a bool", f"pass {key}=True or {key}=False")
        flags[key] = v
    if flags["cuda_graphs"] and mode in GRAPHING_MODES:
        raise UsageError(f"torch_compile={mode!r} already captures CUDA graphs, so cuda_graphs=True "
                         "would capture them twice",
                         "drop cuda_graphs, or use torch_compile='default' / "
                         "'max-autotune-no-cudagraphs' with cuda_graphs=True")
    if flags["tf32"] and precision != "fp32":
        raise UsageError(f"tf32=True only affects fp32 models, not {precision}",
                         "drop tf32, or compile at precision fp32")
    return Recipe(precision=precision, torch_compile=mode, **flags)
