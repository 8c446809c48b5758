"""``python -m hal_conformance``: the suite without hal's CLI (same options)."""

from __future__ import annotations

import argparse
import sys

from .cli import run_cli


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hal_conformance",
                                description="Run the zoo on every installed hal backend.")
    p.add_argument("-b", "--backend", action="append", help="backend name or device target")
    p.add_argument("-m", "--model", action="append", help="zoo model")
    p.add_argument("-p", "--precision", action="append", help="flow: fp32 fp16 bf16 int8 int8-dynamic")
    p.add_argument("--json", dest="json_path")
    p.add_argument("--junit", dest="junit_path")
    p.add_argument("--html", dest="html_path")
    p.add_argument("--export-goldens", metavar="DIR")
    p.add_argument("--goldens", metavar="DIR")
    p.add_argument("--timeout", dest="timeout_s", type=float, default=300.0, help="seconds per cell")
    p.add_argument("-j", "--jobs", type=int, default=1, help="backends run at once")
    p.add_argument("--markdown", dest="markdown_path", help="write a markdown report here")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="run over every node of the Ray cluster at HOST:PORT, or 'local'")
    p.add_argument("--cross-check", choices=("none", "first", "all"), default="first",
                   help="with --cluster: cells that run on every host with the device (default: "
                        "each model's first flow)")
    a = p.parse_args(argv)
    return run_cli(a.backend, a.model, a.precision, a.json_path, a.junit_path, a.html_path,
                   a.export_goldens, a.goldens, a.timeout_s, a.jobs, cluster=a.cluster,
                   markdown_path=a.markdown_path, cross_check=a.cross_check)


if __name__ == "__main__":
    sys.exit(main())
