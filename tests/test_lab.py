"""The conformance lab on a real Ray cluster: several raylets on this host, each a
"host" with its own plugin set (HAL_PLUGINS and PYTHONPATH in its environment) and
its own name (HAL_LAB_HOST), everything bound to 127.0.0.1.

Cluster A (three hosts, different devices): node-a has the reference backend,
node-b the example ONNX Runtime plugin, node-c the plugin that aborts plus the one
with wrong answers. Its run must equal the single-host runs of each node, cell for
cell, and the abort must be `crash` cells on node-c only.

Cluster B (three hosts with the same `drift:cpu` device, whose outputs each host
moves by its own $HAL_DRIFT: +0.9e-4, -0.9e-4, 0 of max|out|; node-c also has
`wrong:cpu`): cells split between the hosts and the cross-check flags exactly the
pair that differs by more than the fp32 limit although each host passes. Then
node-c is killed mid-run: its unfinished drift cells run on the other hosts, its
wrong cells are `lost` with host and reason, nothing it finished is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'hal-accel[lab]')")
pytest.importorskip("ray.cluster_utils", reason="this Ray has no test cluster utilities")
pytest.importorskip("torch", reason="the zoo is defined in PyTorch")
pytest.importorskip("sklearn", reason="the zoo's data is scikit-learn's digits")
pytest.importorskip("onnxruntime", reason="the example plugin runs on ONNX Runtime")
pytest.importorskip("onnxscript", reason="hal converts torch → ONNX with torch.onnx (dynamo)")

from hal_conformance.lab import Lab  # noqa: E402
from hal_conformance.lab.local_cluster import HostSpec, LocalCluster  # noqa: E402
from hal_conformance.options import Options  # noqa: E402

ROOT = Path(__file__).parent
PLUGINS = [ROOT / "plugins" / d for d in ("hal-example-backend", "hal-crash-backends", "hal-wrong-backend")]
PLUGINS.append(ROOT / "lab_plugins" / "hal-drift-backend")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """pip-install the test plugins into a private folder, as a node's admin would."""
    tmp = tmp_path_factory.mktemp("lab-plugins")
    srcs = []
    for d in PLUGINS:
        shutil.copytree(d, tmp / "src" / d.name, ignore=shutil.ignore_patterns("build", "*.egg-info"))
        srcs.append(str(tmp / "src" / d.name))
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--no-build-isolation", "--no-index", "--target", str(tmp / "site"), *srcs],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return tmp / "site"


def hosts_of(site: Path, hosts: list[dict]) -> list[HostSpec]:
    return [HostSpec(h["host"], h["plugins"], h.get("cpus", 1), h.get("env", {}), [str(site)])
            for h in hosts]


def start_cluster(request, site, hosts) -> LocalCluster:
    c = LocalCluster(hosts_of(site, hosts))
    request.addfinalizer(c.shutdown)
    return c


def lab_of(address: str, tmp: Path, on_cell=None, cross_check: str = "first", **filters) -> Lab:
    return Lab(Options(timeout_s=120, startup_timeout_s=120, json_path=tmp / "lab.json",
                       cluster=address, cross_check=cross_check, **filters), on_cell=on_cell)


def run_lab(address: str, tmp: Path, **kw):
    t0 = time.monotonic()
    report = lab_of(address, tmp, **kw).run()
    return report, time.monotonic() - t0


# --- cluster A: three hosts with different devices --------------------------------------
A_HOSTS = [{"host": "node-a", "plugins": "reference"},
           {"host": "node-b", "plugins": "example"},
           {"host": "node-c", "plugins": "abort,wrong"}]
A_FILTER = {"models": ["mlp"], "precisions": ["fp32", "int8-dynamic"]}


@pytest.fixture(scope="module")
def cluster_a(request, site):
    return start_cluster(request, site, A_HOSTS)


def single_host_run(site: Path, host: dict, tmp: Path) -> dict:
    """The same suite on one node alone (its plugins, plus the reference for the oracle)."""
    spec = hosts_of(site, [{**host, "plugins": host["plugins"] + ",reference"}])[0]
    env = {**os.environ, **spec.environ()}
    path = tmp / f"single-{host['host']}.json"
    args = [a for b in host["plugins"].split(",") for a in ("-b", b)]
    args += [a for m in A_FILTER["models"] for a in ("-m", m)]
    args += [a for p in A_FILTER["precisions"] for a in ("-p", p)]
    subprocess.run([sys.executable, "-m", "hal_conformance", *args, "--timeout", "120", "--json",
                    str(path)], capture_output=True, text=True, env=env, timeout=300)
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def run_a(cluster_a, site, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lab-a")
    with ThreadPoolExecutor(len(A_HOSTS)) as ex:
        singles = dict(zip([h["host"] for h in A_HOSTS],
                           ex.map(lambda h: single_host_run(site, h, tmp), A_HOSTS)))
    report, wall = run_lab(cluster_a.address, tmp, **A_FILTER)
    return report, singles, tmp


@pytest.mark.timeout(420)
def test_three_hosts_equal_their_single_host_runs(run_a):
    report, singles, tmp = run_a
    assert report.complete
    lab = {c.id: c for c in report.cells}
    assert len(lab) == len(report.cells), "a cell was recorded twice"
    expected = {}
    for host, single in singles.items():
        assert single["complete"], host
        for c in single["cells"]:
            expected[c["id"]] = (host, c)
    assert set(lab) == set(expected)
    for cid, (host, c) in expected.items():
        got = lab[cid]
        assert got.host == host, cid
        assert got.result == c["result"], (cid, got.message, c["message"])
        if c["result"] in ("pass", "fail"):
            assert got.top1_agreement == c["top1_agreement"], cid
            assert abs(got.rel_max_err - c["rel_max_err"]) <= 1e-5, cid
    # each host's versions are in the report, with the host's own plugin set
    hosts = report.meta["lab"]["hosts"]
    assert set(hosts) == {"node-a", "node-b", "node-c"}
    loaded = {h: {p["name"] for p in v["plugins"] if p["loaded"] and p["source"] != "default"}
              for h, v in hosts.items()}
    assert loaded == {"node-a": {"reference"}, "node-b": {"example"}, "node-c": {"abort", "wrong"}}
    assert hosts["node-b"]["backends"]["example"]["version"] and hosts["node-a"]["hal_version"]
    # the JSON on disk is the same merged report, complete
    on_disk = json.loads((tmp / "lab.json").read_text())
    assert on_disk["complete"] and len(on_disk["cells"]) == len(lab)
    assert {c["host"] for c in on_disk["cells"]} == {"node-a", "node-b", "node-c"}


@pytest.mark.timeout(420)
def test_a_crashing_plugin_crashes_only_its_own_cells(run_a):
    report, _, _ = run_a
    crashed = [c for c in report.cells if c.result == "crash"]
    assert {c.id for c in crashed} == {"abort:cpu/mlp/fp32", "abort:cpu/mlp/int8-dynamic"}
    assert all(c.host == "node-c" and "SIGABRT" in c.message for c in crashed)
    # the worker was restarted on node-c after the first crash, and nothing else broke
    assert report.backends["abort@node-c"]["worker_starts"] == 2
    others = [c for c in report.cells if c.host != "node-c"]
    assert others and all(c.result == "pass" for c in others if c.runnable)


@pytest.mark.timeout(420)
def test_reports_carry_the_host(run_a, tmp_path):
    from hal_conformance.lab.reports import write_html, write_junit, write_markdown

    report, _, _ = run_a
    write_markdown(report, tmp_path / "r.md")
    write_html(report, tmp_path / "r.html")
    write_junit(report, tmp_path / "r.xml")
    md = (tmp_path / "r.md").read_text()
    assert "| abort:cpu/mlp/fp32 | node-c | crash |" in md
    assert "## Hosts" in md and "| node-b | " in md
    page = (tmp_path / "r.html").read_text()
    assert "id=lab" in page and "node-a" in page and page.rstrip().endswith("</html>")
    xml = (tmp_path / "r.xml").read_text()
    assert 'name="host" value="node-c"' in xml


@pytest.mark.timeout(300)
def test_devices_cli_groups_by_host(cluster_a):
    out = subprocess.run([sys.executable, "-m", "hal.cli", "lab", "devices", cluster_a.address,
                          "--json"], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    hosts = {h["host"]: h for h in json.loads(out.stdout)["hosts"]}
    assert set(hosts) == {"node-a", "node-b", "node-c"}
    targets = {h: {d["target"] for d in v["devices"] if d["advertised"]} for h, v in hosts.items()}
    assert targets == {"node-a": {"reference:cpu"}, "node-b": {"example:cpu"},
                       "node-c": {"abort:cpu", "wrong:cpu"}}


# --- cluster B: three hosts with the same device; then one is killed ------------------------
B_HOSTS = [{"host": "node-b", "plugins": "drift", "env": {"HAL_DRIFT": "0.9e-4"}},
           {"host": "node-c", "plugins": "drift,wrong", "env": {"HAL_DRIFT": "-0.9e-4"}, "cpus": 2},
           {"host": "node-d", "plugins": "drift", "env": {"HAL_DRIFT": "0"}}]
B_MODELS = ["mlp", "digits_cnn", "resnet"]


@pytest.fixture(scope="module")
def gate(tmp_path_factory) -> Path:
    """The drift and wrong fixtures' $HAL_GATE: open unless a test writes ``closed``."""
    return tmp_path_factory.mktemp("lab-gate")


@pytest.fixture(scope="module")
def cluster_b(request, site, gate):
    return start_cluster(request, site, [{**h, "env": {**h["env"], "HAL_GATE": str(gate)}} for h in B_HOSTS])


@pytest.fixture(scope="module")
def same_device_run(cluster_b, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lab-same")
    return run_lab(cluster_b.address, tmp, backends=["drift"], models=B_MODELS,
                   precisions=["fp32", "fp16"])


@pytest.mark.timeout(420)
def test_same_device_cells_split_and_hosts_compared(same_device_run):
    report, _ = same_device_run
    assert report.complete
    cells = {c.id: c for c in report.cells}
    assert set(cells) == {f"drift:cpu/{m}/{p}" for m in B_MODELS for p in ("fp32", "fp16")}
    # every host on its own is within the fp32 limit ...
    assert all(c.result == "pass" for c in cells.values()), [c.message for c in cells.values()]
    # ... the cells were split between the hosts (each ran a share, none ran them all) ...
    by_host = {}
    for c in cells.values():
        by_host.setdefault(c.host, []).append(c.id)
    assert len(by_host) >= 2 and set(by_host) <= {"node-b", "node-c", "node-d"}, by_host
    # ... and the fp32 cross-check saw what no host alone could: node-b and node-c differ by
    # 1.8e-4·max|ref| (> 1e-4), while each differs from node-d by 0.9e-4 (within it)
    entries = [e for e in report.meta["lab"]["consistency"] if "pairs" in e]
    assert {e["cell"] for e in entries} == {f"drift:cpu/{m}/fp32" for m in B_MODELS}
    for e in entries:
        assert e["compared"] and not e["missing"], e
        verdict = {(p["a"], p["b"]): p["agree"] for p in e["pairs"]}
        assert verdict == {("node-b", "node-c"): False, ("node-b", "node-d"): True,
                           ("node-c", "node-d"): True}, e
        bc = next(p for p in e["pairs"] if p["a"] == "node-b" and p["b"] == "node-c")
        assert 1.0e-4 < bc["rel_diff"] < 2.5e-4
    assert sum("cross-host" in x for x in report.errors) == len(B_MODELS)
    assert report.summary()["exit_code"] == 1


@pytest.fixture(scope="module")
def node_loss_run(cluster_b, same_device_run, gate, tmp_path_factory):
    """node-c killed while it has drift cells and wrong's ResNet cell in flight, after
    finishing wrong's first cells. Which host runs what depends on how fast each starts (an
    idle host takes from the busiest), so the gate holds every drift compile and wrong's
    ResNet, and so every host's first drift cell, until node-c holds both; then node-c
    dies, and the gate opens once the driver knows. No clock decides anything: the waits
    are bounds."""
    tmp = tmp_path_factory.mktemp("lab-loss")
    (gate / "closed").write_text("drift:* wrong:ResNet\n")
    cells: list = []
    killed: dict = {}
    lab = lab_of(cluster_b.address, tmp, on_cell=cells.append, cross_check="none",
                 backends=["drift", "wrong"], models=B_MODELS, precisions=["fp32", "fp16"])

    def kill_when_held():
        try:
            for _ in range(3000):
                if any(gate.glob("waiting-drift-node-c-*")) and (gate / "waiting-wrong-node-c-ResNet").exists():
                    rn = next(r for r in lab.executor.runners
                              if r.host == "node-c" and r.device.target == "drift:cpu")
                    killed.update(in_flight=rn.current.id, held=[rn.current.id, *(s.id for s in rn.own)],
                                  finished=[c.id for c in cells if c.host == "node-c" and c.runnable])
                    cluster_b.kill("node-c")
                    break
                time.sleep(0.1)
            for _ in range(1200):  # the driver has given node-c's drift cells back: else an idle
                # host could take them from node-c's queue first (run, but not as a rerun)
                if any(x["target"] == "drift:cpu" for x in lab.executor.losses):
                    break
                time.sleep(0.1)
        finally:
            (gate / "closed").unlink(missing_ok=True)

    watcher = threading.Thread(target=kill_when_held, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    report = lab.run()
    watcher.join(timeout=60)
    return report, killed, time.monotonic() - t0, tmp


@pytest.mark.timeout(420)
def test_node_killed_mid_run(node_loss_run):
    report, killed, wall, tmp = node_loss_run
    assert killed, "node-c never had its drift and wrong cells in flight at the gate"
    assert report.complete
    cells = {c.id: c for c in report.cells}
    assert len(cells) == len(report.cells), "a cell was recorded twice"
    drift = {f"drift:cpu/{m}/{p}" for m in B_MODELS for p in ("fp32", "fp16")}
    wrong = {f"wrong:cpu/{m}/{p}" for m in B_MODELS for p in ("fp32", "fp16")}
    assert set(cells) == drift | wrong
    # nothing node-c finished before it died is missing (wrong's cells before the ResNet)
    assert {"wrong:cpu/mlp/fp32", "wrong:cpu/digits_cnn/fp32"} <= set(killed["finished"]), killed
    for cid in killed["finished"]:
        assert cells[cid].host == "node-c" and cells[cid].result != "lost", cells[cid]
    # what node-c held of drift:cpu (in flight at the gate, and its queue) ran on another host
    assert all(cells[c].result == "pass" for c in drift), [cells[c].message for c in drift]
    reruns = report.meta["lab"]["reruns"]
    assert sorted(r["cell"] for r in reruns) == sorted(killed["held"]), (reruns, killed)
    for r in reruns:
        assert r["from"] == "node-c" and r["to"] in ("node-b", "node-d") and cells[r["cell"]].host == r["to"]
        assert any("rerun on" in n for n in cells[r["cell"]].notes)
    # wrong:cpu was only on node-c: what it had not finished is lost, with host and reason
    lost = [cells[c] for c in wrong if cells[c].result == "lost"]
    assert [c.id for c in lost] == ["wrong:cpu/resnet/fp32"]
    for c in lost:
        assert c.host == "node-c" and "node-c left the cluster" in c.message, c.message
    for c in wrong - {c.id for c in lost}:
        assert cells[c].result in ("fail", "unsupported") and cells[c].host == "node-c"
    losses = report.meta["lab"]["losses"]
    assert losses and all(x["host"] == "node-c" for x in losses)
    assert report.summary()["exit_code"] == 1  # lost cells are not a pass
    on_disk = json.loads((tmp / "lab.json").read_text())
    assert on_disk["complete"] and len(on_disk["cells"]) == len(cells)


# --- errors: one clear hal error, no Ray started -----------------------------------------------
@pytest.mark.timeout(120)
def test_bad_cluster_address_is_a_usage_error(capsys):
    from hal_conformance.cli import run_cli

    assert run_cli(Options(models=["mlp"], cluster="no-port-here")) == 2
    assert "is not HOST:PORT, 'auto' or 'local'" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_nobody_at_the_address(capsys):
    import socket

    from hal_conformance.cli import run_cli

    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert run_cli(Options(models=["mlp"], cluster=f"127.0.0.1:{port}")) == 1
    err = capsys.readouterr().err
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in err and "ray start --head" in err
    assert not ray.is_initialized()


@pytest.mark.timeout(120)
def test_unknown_cross_check():
    import hal

    with pytest.raises(hal.UsageError, match="unknown cross-check"):
        Lab(Options(cross_check="sometimes"))


# --- parity: one planner, one judge, the same cells on one host and on a cluster ---------
# ``full`` only (``pytest --full``): the default run keeps the cheaper checks of the same
# planner and executor path: the pure planner on these very models
# (test_conformance.py::test_the_planner_owns_routers_dynamic_batch_onnx_and_integer_inputs),
# the local executor on each kind of cell (test_conformance_tiers.py: operators, ONNX node
# cases, mobilenet_v1 at a static and a dynamic batch) and cluster A above (the lab on Ray
# gives each host's single-host cells, cell for cell).
#: a sample of every kind of cell: the quick zoo, torch operators (one with integer
#: inputs, which static int8 cannot calibrate), ONNX node cases, an architecture with its
#: dynamic-batch cell
PARITY = {"suite": "full", "backends": ["reference"], "precisions": ["fp32", "int8"],
          "models": ["mlp", "conv2d.basic", "embedding", "onnx:Relu", "mobilenet_v1"]}


@pytest.mark.full  # minutes (two full-suite runs, one on Ray): see the comment above
@pytest.mark.timeout(1500)
def test_one_host_and_a_local_cluster_give_the_same_cells(tmp_path):
    """The same options give the same cell ids, results, stages and reasons on this host
    and on ``--cluster local`` (the lab once ran the quick zoo whatever the suite)."""
    from hal_conformance.plan import Shapes
    from hal_conformance.runner import Suite, export_goldens

    pytest.importorskip("onnx")
    pytest.importorskip("transformers", reason="the architectures come from transformers")
    goldens = tmp_path / "goldens"  # one oracle run for both sides
    export_goldens(goldens, PARITY["models"], onnx=False, suite="full", timeout_s=600)
    opts = dict(PARITY, goldens=goldens, timeout_s=600, startup_timeout_s=300)
    single = Suite(Options(**opts, json_path=tmp_path / "one.json")).run()
    lab = Lab(Options(**opts, json_path=tmp_path / "lab.json", cluster="local")).run()
    assert single.complete and lab.complete and not single.errors and not lab.errors, lab.errors
    one = {c.id: (c.result, c.stage, c.reason) for c in single.cells}
    many = {c.id: (c.result, c.stage, c.reason) for c in lab.cells}
    assert one == many
    suites = {c.suite for c in single.cells}
    assert suites == {"quick", "ops", "onnx", "models"}, suites
    cells = {c.id: c for c in lab.cells}
    assert cells["reference:cpu/mobilenet_v1/fp32@dynamic"].shapes == Shapes.DYNAMIC
    emb = cells["reference:cpu/embedding/int8"]
    assert emb.result == "unsupported" and emb.reason == "integer-inputs"
    assert all(c.host for c in lab.cells)  # the lab says where each cell ran
