"""Wall time of the conformance suite over a Ray lab of N nodes on this machine, and
what losing a node costs.

Every node is a raylet of a local test cluster (hal_conformance.lab.local_cluster),
bound to 127.0.0.1, with 1 Ray CPU (one device at a time per node).

    python benchmarks/bench_lab.py single                  # hal conformance on this host, no Ray
    python benchmarks/bench_lab.py lab --nodes 1           # every device on one node
    python benchmarks/bench_lab.py lab --nodes 3           # every device on each of 3 nodes
    python benchmarks/bench_lab.py lab --nodes 3 --split   # the plugins shared out: one node each
    python benchmarks/bench_lab.py loss --nodes 3          # the last node killed after its first cell
    python benchmarks/bench_lab.py lab --nodes 3 --suite full --timeout 600 --json lab.json --markdown lab.md

Filters (-b, -m, -p) and --suite restrict the run; --cross-check is the lab's (default:
none, so that N nodes run the same cells as one); --json and --markdown keep the report.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

BUILTIN = ["reference", "openvino", "tpu", "edgetpu"]


def single(a) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        args = [x for b in a.backend or () for x in ("-b", b)] + [x for m in a.model or () for x in ("-m", m)]
        args += [x for p in a.precision or () for x in ("-p", p)]
        args += ["--suite", a.suite, "--timeout", str(a.timeout)]
        args += ["--markdown", str(a.markdown)] if a.markdown else []
        path = a.json or Path(tmp) / "r.json"
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "hal_conformance", *args, "--json", str(path)],
                       capture_output=True, timeout=4 * 3600)
        wall = time.monotonic() - t0
        r = json.loads(path.read_text())
    return {"mode": "single host, no Ray", "wall_s": round(wall, 1), "summary": r["summary"]}


def lab(a, kill: bool = False) -> dict:
    from hal_conformance.lab import Lab
    from hal_conformance.lab.local_cluster import HostSpec, LocalCluster
    from hal_conformance.options import Options

    names = [f"node-{i + 1}" for i in range(a.nodes)]
    if a.split:
        plugins = {n: ",".join(p for j, p in enumerate(BUILTIN) if j % a.nodes == i)
                   for i, n in enumerate(names)}  # the oracle runs on the driver, as always
    else:
        plugins = {n: None for n in names}
    t_cluster = time.monotonic()
    # --ray-defaults: Ray's own health checks (a dead node marked after ~15 s), memory monitor off
    cluster = LocalCluster([HostSpec(n, plugins[n], cpus=a.cpus) for n in names],
                           system_config={"memory_monitor_refresh_ms": 0} if a.ray_defaults else None)
    t_cluster = time.monotonic() - t_cluster
    killed: dict = {}
    finished: list = []

    def on_cell(c) -> None:
        if kill and c.host == names[-1] and c.runnable and not killed:
            killed["at"] = time.monotonic()
            killed["had_finished"] = sum(1 for x in finished if x.host == names[-1]) + 1
            cluster.kill(names[-1])
        finished.append(c)

    try:
        opts = Options(backends=a.backend, suite=a.suite, models=a.model, precisions=a.precision,
                       timeout_s=a.timeout, startup_timeout_s=300, json_path=a.json,
                       cluster=cluster.address, cross_check=a.cross_check)
        t0 = time.monotonic()
        r = Lab(opts, on_cell=on_cell).run()
        wall = time.monotonic() - t0
    finally:
        cluster.shutdown()
    if a.markdown:
        from hal_conformance.lab.reports import write_markdown

        write_markdown(r, a.markdown)
    out = {"mode": f"lab, {a.nodes} node(s) × {a.cpus} CPU" + (" (plugins split)" if a.split else "")
           + (", Ray's default health checks" if a.ray_defaults else "")
           + (", last node killed" if kill else ""), "cluster_start_s": round(t_cluster, 1),
           "wall_s": round(wall, 1), "summary": r.summary(),
           "cells_per_host": dict(Counter(c.host for c in r.cells if c.runnable)),
           "plugins": plugins}
    if kill:
        loss = r.meta["lab"]["losses"]
        out["kill_after_s"] = round(killed["at"] - t0, 1) if killed else None
        out["noticed_after_kill_s"] = (round(loss[0]["after_s"] - (killed["at"] - t0), 1)
                                       if killed and loss else None)
        out["finished_on_killed_node"] = killed.get("had_finished")
        out["reruns"] = len(r.meta["lab"]["reruns"])
        out["lost_cells"] = sum(1 for c in r.cells if c.result == "lost")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("single", "lab", "loss"))
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--split", action="store_true", help="share the built-in plugins out over the nodes")
    p.add_argument("--cpus", type=int, default=1, help="Ray CPUs per node: devices it runs at once")
    p.add_argument("--ray-defaults", action="store_true",
                   help="Ray's default health checks instead of the tests' fast ones")
    p.add_argument("--cross-check", default="none", choices=("none", "first", "all"))
    p.add_argument("--suite", default="quick", choices=("quick", "ops", "models", "full"))
    p.add_argument("--timeout", type=float, default=300.0, help="seconds one cell may take")
    p.add_argument("--json", type=Path, help="keep the run's JSON report here")
    p.add_argument("--markdown", type=Path, help="write its markdown summary here")
    p.add_argument("-b", "--backend", action="append")
    p.add_argument("-m", "--model", action="append")
    p.add_argument("-p", "--precision", action="append")
    a = p.parse_args()
    res = single(a) if a.what == "single" else lab(a, kill=a.what == "loss")
    sys.stdout.write(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
