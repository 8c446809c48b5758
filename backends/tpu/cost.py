"""XLA's own cost analysis (flops, bytes accessed) of the HLO TensorFlow built.

TensorFlow exposes the HLO (``experimental_get_compiler_ir(...)(stage='hlo')``)
but not XLA's ``HloCostAnalysis``; jaxlib binds it, so when jaxlib is installed
the HLO text is parsed and analysed by the same XLA code a compiled jax
program's ``cost_analysis()`` uses. Nothing here estimates.
"""

from __future__ import annotations

from typing import Any

KEYS = {"flops": "flops", "transcendentals": "transcendentals", "bytes accessed": "bytes_accessed",
        "optimal_seconds": "optimal_seconds"}


def analyse(hlo_text: str) -> dict[str, Any]:
    """Cost of one HLO module; raises ImportError/RuntimeError when unavailable."""
    import jax.extend.backend as jeb
    from jaxlib import _hlo, _jax

    module = _hlo.hlo_module_from_text(hlo_text)
    raw = _jax.hlo_module_cost_analysis(jeb.get_backend("cpu"), module)
    out = {KEYS[k]: float(v) for k, v in raw.items() if k in KEYS}
    if "flops" not in out:
        raise RuntimeError("XLA's cost analysis returned no flop count")
    return out
