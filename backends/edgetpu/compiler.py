"""Run ``edgetpu_compiler`` and read what it says it mapped.

The compiler is a closed x86-64/aarch64 binary from Coral's apt repository;
when it is not on PATH the backend says so instead of pretending.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from hal import CompileError

BINARY = "edgetpu_compiler"
TIMEOUT_S = 600


def path() -> str | None:
    return shutil.which(BINARY)


@lru_cache(maxsize=1)
def version() -> str | None:
    exe = path()
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"version\s+([\w.]+)", out.stdout + out.stderr, re.I)
    return m.group(1) if m else (out.stdout.strip() or None)


@dataclass
class CompilerReport:
    """``edgetpu_compiler -s``: the authoritative TPU/CPU split."""

    version: str | None
    ops_on_edgetpu: int | None
    ops_on_cpu: int | None
    operators: list[dict[str, Any]] = field(default_factory=list)  # {op, count, status}
    log: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_ROW = re.compile(r"^([A-Z][A-Z0-9_]*)\s+(\d+)\s+(\S.*)$")


def parse_log(text: str, compiler_version: str | None = None) -> CompilerReport:
    """Read the summary ``edgetpu_compiler -s`` prints (and its ``*_edgetpu.log``):
    the "Number of operations that will run on Edge TPU/CPU" lines and the
    Operator / Count / Status table."""
    def count(where: str) -> int | None:
        m = re.search(rf"Number of operations that will run on {where}:\s*(\d+)", text)
        return int(m.group(1)) if m else None

    rows, in_table = [], False
    for line in text.splitlines():
        s = line.strip()
        if re.match(r"^Operator\s+Count\s+Status", s):
            in_table = True
            continue
        m = _ROW.match(s) if in_table else None
        if m:
            status = m.group(3).strip()
            rows.append({"op": m.group(1), "count": int(m.group(2)), "status": status,
                         "where": "edgetpu" if status.startswith("Mapped to Edge TPU") else "cpu"})
    tpu, cpu = count("Edge TPU"), count("CPU")
    if tpu is None and rows:
        tpu = sum(r["count"] for r in rows if r["where"] == "edgetpu")
        cpu = sum(r["count"] for r in rows if r["where"] == "cpu")
    return CompilerReport(compiler_version, tpu, cpu, rows, text)


def compile_model(int8_tflite: bytes, min_runtime_version: int | None = None
                  ) -> tuple[bytes, CompilerReport]:
    """``edgetpu_compiler -s [-m N]`` on the model; returns the compiled
    flatbuffer and the parsed report (its log kept verbatim)."""
    exe = path()
    if exe is None:
        raise CompileError(f"{BINARY} is not on PATH",
                           "install edgetpu-compiler from Coral's apt repository")
    with tempfile.TemporaryDirectory(prefix="hal-edgetpu-") as tmp:
        src = Path(tmp) / "model.tflite"
        src.write_bytes(int8_tflite)
        cmd = [exe, "-s", "-o", tmp]
        if min_runtime_version is not None:
            cmd += ["-m", str(int(min_runtime_version))]
        try:
            run = subprocess.run(cmd + [str(src)], capture_output=True, text=True,
                                 timeout=TIMEOUT_S, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise CompileError(f"{BINARY} ran past {TIMEOUT_S} s",
                               "simplify the model or compile it by hand") from None
        text = run.stdout + run.stderr
        log = Path(tmp) / "model_edgetpu.log"
        if log.exists():
            text += "\n" + log.read_text(errors="replace")
        out = Path(tmp) / "model_edgetpu.tflite"
        if run.returncode != 0 or not out.exists():
            tail = " ".join(text.split())[-400:]
            raise CompileError(f"{BINARY} failed (exit {run.returncode}): {tail}",
                               "see the Edge TPU model requirements (g.co/coral/model-reqs)")
        return out.read_bytes(), parse_log(text, version())
