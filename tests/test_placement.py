"""The core's placement gate (hal/api.py, hal.placement) and conformance's placement rule.

A device that is not the host runs the whole model or nothing: when its runtime reports ops
on the host, hal.compile and hal.load refuse and name them, unless the caller passes
allow_host_ops=True (then a note says how many). Checked on a toy accelerator
(tests/placement_toy.py) whose runtime reports placement from the model file, so that
nothing here depends on a real backend's partitioner.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import hal
from hal import api
from hal.placement import ALLOWED, OpPlacement, Placement, stated
from hal.plugin import registry

sys.path.insert(0, str(Path(__file__).parent))
import craft  # noqa: E402
import placement_toy as toy  # noqa: E402

TARGET = "toynpu:npu"
X = np.arange(4, dtype=np.float32).reshape(1, 4)


@pytest.fixture
def npu(monkeypatch, tmp_path):
    """The toy backend and format in this process's registry, for one test."""
    reg = registry()
    monkeypatch.setitem(reg.formats, toy.FORMAT.name, toy.FORMAT)
    monkeypatch.setitem(reg.backends, toy.ToyBackend.name, toy.ToyBackend())
    api._probed.pop(toy.ToyBackend.name, None)
    monkeypatch.setattr(toy, "HOST_ON_LOAD", set())
    monkeypatch.setattr(toy, "BROKEN", False)
    monkeypatch.setattr(toy, "SILENT", False)
    yield tmp_path
    api._probed.pop(toy.ToyBackend.name, None)


def _compile(path, cache_dir, **kw):
    return hal.compile(path, TARGET, example_input=X, cache_dir=cache_dir, **kw)


def test_host_ops_are_refused_and_named(npu):
    m = toy.write_model(npu / "m.toy", host=("b",))
    with pytest.raises(hal.UnsupportedError) as e:
        _compile(m, npu / "cache")
    msg = str(e.value)
    assert "toynpu:npu cannot run the whole model" in msg and "1 of 3 ops (b (OpB))" in msg
    assert "(placement read from the toy runtime's op table)" in msg
    assert "allow_host_ops=True" in msg and "--allow-host-ops" in msg and "\n" not in msg
    assert not list((npu / "cache").glob("*.hal"))  # a refused build is never cached


def test_long_op_names_are_cut_short_in_the_message(npu):
    """Real runtimes name ops by module paths hundreds of characters long (a TFLite tensor
    of a transformers ResNet: 'pkg.wrapper.<locals>.Logits/transformers.models.resnet...;1');
    the refusal and the note name each op by its type and the end of its name, and the
    record keeps every name whole."""
    prefix = ("hal_conformance.architectures._logits_wrapper.<locals>.Logits/transformers.models."
              "resnet.modeling_resnet.ResNetModel/transformers.models.resnet.modeling_resnet.")
    names = [f"{prefix}ResNetStage_{i}/torch.nn.modules.conv.Conv2d_convolution;{i}"
             for i in range(12)]
    m = npu / "long.toy"
    m.write_text(json.dumps({"ops": [{"name": "input", "op": "QUANTIZE", "host": False}]
                            + [{"name": n, "op": "PADV2", "host": True} for n in names]}))
    with pytest.raises(hal.UnsupportedError) as e:
        _compile(m, None, cache=False)
    msg = e.value.what
    assert "12 of 13 ops (…" in msg and "Conv2d_convolution;0 (PADV2)" in msg
    assert prefix not in msg and "and 4 more" in msg and len(msg) < 700, msg
    exe = _compile(m, None, cache=False, allow_host_ops=True)
    note = next(n for n in exe.info.notes if n.startswith(ALLOWED))
    assert prefix not in note and note.startswith(f"{ALLOWED}12 of 13 ops (…")
    assert [o.name for o in exe.placement.host_ops] == names  # the record: whole names
    assert exe.info.placement["host"] == [f"{n} (PADV2)" for n in names[:8]]


def test_short_name_keeps_the_end_at_a_separator():
    from hal.placement import short_name

    assert short_name("conv1") == "conv1"
    assert short_name("a.b/" + "c" * 50 + "/tail;3") == "…tail;3"
    assert short_name("x" * 100) == "…" + "x" * 39  # one component too long: its end
    assert short_name("__module.layer1.0.conv1/aten::_convolution/Convolution", 32) == \
        "…aten::_convolution/Convolution"


def test_allowed_host_ops_run_with_a_note(npu):
    m = toy.write_model(npu / "m.toy", host=("b", "c"))
    exe = _compile(m, None, cache=False, allow_host_ops=True)
    np.testing.assert_array_equal(exe(X), 2 * X)
    assert exe.info.allow_host_ops is True
    notes = [n for n in exe.info.notes if n.startswith(ALLOWED)]
    assert notes == ["allow_host_ops: 2 of 3 ops (b (OpB), c (OpC)) run on the host, not on "
                     "toynpu:npu (placement read from the toy runtime's op table)"]
    assert isinstance(exe.placement, Placement)
    assert [o.name for o in exe.placement.host_ops] == ["b", "c"]
    assert exe.info.placement == {"device_ops": 1, "host_ops": 2, "io_ops": 0,
                                  "units": {"NPU": 1, "CPU": 2},
                                  "host": ["b (OpB)", "c (OpC)"],
                                  "source": "the toy runtime's op table", "emulated": False}


def test_edge_io_conversions_run_on_the_host_without_permission(npu):
    """An op that only converts the model's own input or output at the graph's edge (a
    float-I/O TFLite's first QUANTIZE and last DEQUANTIZE) runs on the host, as hal's own
    quantization does: it is listed there, counted apart, and neither refused nor noted;
    a host op beside it still is."""
    m = npu / "io.toy"
    m.write_text(json.dumps({"ops": [{"name": "q", "op": "QUANTIZE", "host": True, "io": True},
                                     {"name": "a", "op": "OpA", "host": False},
                                     {"name": "dq", "op": "DEQUANTIZE", "host": True, "io": True}]}))
    exe = _compile(m, None, cache=False)
    assert exe.placement.host_ops == [] and [o.name for o in exe.placement.io_ops] == ["q", "dq"]
    assert all(not o.on_device and o.unit == "CPU" for o in exe.placement.io_ops)
    assert {k: exe.info.placement[k] for k in ("device_ops", "host_ops", "io_ops")} == {
        "device_ops": 1, "host_ops": 0, "io_ops": 2}
    assert not any(n.startswith(ALLOWED) for n in exe.info.notes)
    assert stated(exe.info.placement, exe.info.notes)
    from hal.cli import placement_line

    assert "1 op(s) on the device, 0 on the host, 2 converting the model's I/O on the host" in \
        placement_line(exe.info.placement)
    m.write_text(json.dumps({"ops": [{"name": "q", "op": "QUANTIZE", "host": True, "io": True},
                                     {"name": "a", "op": "OpA", "host": True}]}))
    with pytest.raises(hal.UnsupportedError, match=r"1 of 2 ops \(a \(OpA\)\)"):
        _compile(m, None, cache=False)
    exe = _compile(m, None, cache=False, allow_host_ops=True)
    assert stated(exe.info.placement, exe.info.notes)  # 1 of 2 ops: the total counts q


def test_every_op_on_the_device_needs_no_permission(npu):
    exe = _compile(toy.write_model(npu / "m.toy"), None, cache=False)
    assert exe.info.placement["host_ops"] == 0 and exe.info.placement["device_ops"] == 3
    assert not any(n.startswith(ALLOWED) for n in exe.info.notes)
    assert exe.info.allow_host_ops is False


def test_allow_host_ops_is_in_the_cache_key(npu):
    m = toy.write_model(npu / "m.toy")
    cache = npu / "cache"
    assert not _compile(m, cache).info.cache_hit
    allowed = _compile(m, cache, allow_host_ops=True)
    assert not allowed.info.cache_hit and allowed.info.allow_host_ops  # another key
    assert _compile(m, cache, allow_host_ops=True).info.cache_hit
    again = _compile(m, cache)
    assert again.info.cache_hit and again.info.allow_host_ops is False
    assert len(list(cache.glob("*.hal"))) == 2
    # the entry that allows host ops never serves a caller who does not
    h = toy.write_model(npu / "h.toy", host=("a",))
    assert _compile(h, cache, allow_host_ops=True).info.allow_host_ops
    with pytest.raises(hal.UnsupportedError, match="a \\(OpA\\)"):
        _compile(h, cache)


def test_a_loaded_artifact_keeps_its_permission(npu):
    exe = _compile(toy.write_model(npu / "m.toy", host=("b",)), None, cache=False,
                   allow_host_ops=True)
    path = exe.save(npu / "m.hal")
    with zipfile.ZipFile(path) as z:
        info = json.loads(z.read("hal.json"))["info"]
    assert info["allow_host_ops"] is True
    back = hal.load(path)
    assert back.info.allow_host_ops and back.info.placement["host"] == ["b (OpB)"]
    assert sum(n.startswith(ALLOWED) for n in back.info.notes) == 1  # not noted twice
    np.testing.assert_array_equal(back(X), 2 * X)


def test_load_applies_the_rule_to_what_the_runtime_reports_now(npu, monkeypatch):
    path = _compile(toy.write_model(npu / "m.toy"), None, cache=False).save(npu / "m.hal")
    monkeypatch.setattr(toy, "HOST_ON_LOAD", {"c"})  # this runtime puts c on the host
    with pytest.raises(hal.UnsupportedError) as e:
        hal.load(path)
    assert "1 of 3 ops (c (OpC))" in str(e.value) and "to hal.load" in str(e.value)
    back = hal.load(path, allow_host_ops=True)
    assert back.info.placement["host_ops"] == 1
    assert any(n.startswith(f"{ALLOWED}1 of 3 ops") for n in back.info.notes)


def test_a_failing_placement_is_a_note_not_a_crash(npu, monkeypatch):
    monkeypatch.setattr(toy, "BROKEN", True)
    exe = _compile(toy.write_model(npu / "m.toy", host=("b",)), None, cache=False)
    assert exe.placement is None and exe.info.placement is None
    assert any(n.startswith("placement unknown: toynpu's placement() failed (RuntimeError: the toy "
                            "runtime lost its record)") for n in exe.info.notes), exe.info.notes
    monkeypatch.setattr(toy, "BROKEN", False)
    monkeypatch.setattr(toy, "SILENT", True)
    exe = _compile(toy.write_model(npu / "m.toy"), None, cache=False)
    assert exe.placement is None and exe.info.placement is None


def test_the_switch_is_checked(npu, tmp_path):
    with pytest.raises(hal.UsageError, match="allow_host_ops is a str"):
        _compile(toy.write_model(npu / "m.toy"), None, cache=False, allow_host_ops="yes")
    path = _compile(toy.write_model(npu / "m.toy"), None, cache=False).save(npu / "m.hal")
    bad = craft.repack_hal(path, tmp_path / "bad.hal",
                           meta=lambda m: m["info"].update(allow_host_ops="yes"))
    with pytest.raises(hal.ArtifactError, match="info.allow_host_ops is a str"):
        hal.load(bad)


# --- the CLI ----------------------------------------------------------------------------
def _hal(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import placement_toy; "
            "placement_toy.install(); from hal.cli import main; sys.argv[0] = 'hal'; main()")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_cli_refuses_in_one_line_and_prints_the_placement(tmp_path):
    m = toy.write_model(tmp_path / "m.toy", host=("b",))
    np.save(tmp_path / "x.npy", X)
    common = ["compile", str(m), "-t", TARGET, "-i", str(tmp_path / "x.npy"), "--no-cache",
              "-o", str(tmp_path / "m.hal")]
    p = _hal(*common)
    assert p.returncode == 1 and p.stdout == "", p.stdout + p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: toynpu:npu cannot run the whole model")
    assert "b (OpB)" in p.stderr and "--allow-host-ops" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "m.hal").exists()
    p = _hal(*common, "--allow-host-ops")
    assert p.returncode == 0, p.stderr
    assert ("placement: 2 op(s) on the device, 1 on the host (b (OpB)); from the toy runtime's op "
            "table") in p.stdout
    assert "note: allow_host_ops: 1 of 3 ops (b (OpB)) run on the host" in p.stdout


def test_cli_run_applies_the_rule_to_a_hal_file(tmp_path):
    m = toy.write_model(tmp_path / "m.toy")
    np.save(tmp_path / "x.npy", X)
    p = _hal("compile", str(m), "-t", TARGET, "-i", str(tmp_path / "x.npy"), "--no-cache",
             "-o", str(tmp_path / "m.hal"))
    assert p.returncode == 0 and "placement: 3 op(s) on the device, 0 on the host" in p.stdout, p.stderr
    env = {"TOY_HOST_ON_LOAD": "a"}
    p = _hal("run", str(tmp_path / "m.hal"), "-i", str(tmp_path / "x.npy"), env=env)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "a (OpA)" in p.stderr, p.stderr
    assert "to hal.load (CLI: --allow-host-ops)" in p.stderr and "Traceback" not in p.stderr
    p = _hal("run", str(tmp_path / "m.hal"), "-i", str(tmp_path / "x.npy"), "--allow-host-ops", env=env)
    assert p.returncode == 0 and "[0. 2. 4. 6.]" in p.stdout, p.stdout + p.stderr


# --- conformance's rule (pure: no worker) -------------------------------------------------
def _spec(host_cpu: bool):
    from hal_conformance.plan import CellSpec
    from hal_conformance.protocol import DeviceInfo

    return CellSpec("npu", DeviceInfo("npu", "npu:0", "NPU", host_cpu=host_cpu), "mlp", "fp32")


def _summary(host: tuple[str, ...], total: int = 4) -> dict:
    ops = [OpPlacement(f"op{i}", "Op", "CPU" if f"op{i}" in host else "NPU", f"op{i}" not in host)
           for i in range(total)]
    return Placement(ops, "a record").summary()


def test_conformance_judges_hidden_placement():
    from hal_conformance.judge import hidden_placement
    from hal_conformance.protocol import Outcome, Status
    from hal_conformance.results import Category, Result

    assert Result.PLACEMENT_NOT_HONOURED.category == Category.FAILURE
    ran = lambda **kw: Outcome(Status.RAN, **kw)  # noqa: E731
    # no record: fine on the host CPU, not on an accelerator
    assert hidden_placement(_spec(True), ran()) == ""
    assert "reports no placement" in hidden_placement(_spec(False), ran())
    assert hidden_placement(_spec(False), ran(placement=_summary(()))) == ""
    # host ops the core allowed, and said so
    allowed = _summary(("op1",))
    note = f"{ALLOWED}1 of 4 ops (op1 (Op)) run on the host, not on npu:0 (placement read from a record)"
    assert stated(allowed, [note]) and hidden_placement(_spec(False), ran(placement=allowed,
                                                                          notes=[note])) == ""
    # host ops nothing states: the gate was bypassed (at compile, or found later)
    assert "op1 (Op)" in hidden_placement(_spec(False), ran(placement=allowed))
    late = ran(placement=_summary(()), placement_later=[{"when": "after running",
                                                         **_summary(("op2", "op3"))}])
    why = hidden_placement(_spec(False), late)
    assert "after running lists 2 op(s) on the host (op2 (Op), op3 (Op))" in why
    assert "gate was bypassed" in why
