"""Plugin discovery exactly as a third-party package gets it: a real install with
its own entry point, in a throwaway target directory (the environment is untouched)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    for name in ("hal-example-backend", "hal-broken-import"):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--no-build-isolation", "--target", str(target), str(PLUGINS / name)],
                       check=True, capture_output=True, timeout=300)
    return target


def hal_json(site: Path, *args: str, **env: str):
    p = subprocess.run([sys.executable, "-m", "hal.cli", *args, "--json"], capture_output=True,
                       text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(site), **env})
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_third_party_plugin_is_discovered_and_broken_one_is_reported(site):
    infos = {i["name"]: i for i in hal_json(site, "plugins")}
    assert infos["example"]["loaded"] and infos["example"]["backends"] == ["example"]
    assert infos["example"]["source"] == "hal_example_backend"
    assert infos["example"]["api"] == 2 and infos["example"]["warning"] is None  # HAL_PLUGIN_API = 2
    broken = infos["broken"]
    assert not broken["loaded"] and "broken on purpose" in broken["error"]
    assert infos["reference"]["loaded"]  # the others carry on


def test_discovered_backend_shows_its_devices(site):
    data = hal_json(site, "devices")
    targets = {d["target"]: d for d in data["devices"]}
    assert targets["example:cpu"]["available"] and targets["example:cpu"]["kind"] == "hardware"


def test_restriction_skips_the_broken_plugin(site):
    infos = {i["name"]: i for i in hal_json(site, "plugins", HAL_PLUGINS="reference,example")}
    assert infos["example"]["loaded"]
    assert not infos["broken"]["loaded"] and "disabled" in infos["broken"]["error"]


def test_importing_hal_imports_no_framework():
    code = ("import sys, hal, hal.plugin; hal.plugin.registry().plugins; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch','tensorflow','openvino','onnx','onnxruntime','jax','keras','ai_edge_litert')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_auto_measures_between_equally_ranked_devices(site, tmp_path):
    """Rank is a plugin's own claim: a third-party rank-0 CPU device must not win
    `auto` over the reference CPU (also rank 0) by load order; hal measures both."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    pytest.importorskip("onnxruntime", reason="the example plugin runs on onnxruntime")
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU()).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.zeros(1, 16),), str(path), dynamo=True)
    info = hal_json(site, "compile", str(path), "-t", "auto", "-o", str(tmp_path / "m.hal"),
                    HAL_PLUGINS="reference,example")
    why = [n for n in info["notes"] if n.startswith("auto:")]
    assert why and "measured fastest" in why[0], info["notes"]
    assert "example:cpu" in why[0] and "reference:cpu" in why[0]


def test_install_hints_name_what_to_pip_install():
    from hal.plugin import Backend

    class Npu(Backend):
        name, requires, install = "npu-x", ("hal_no_such_runtime_mod",), "hal-npu-plugin[runtime]"

    class Bare(Backend):
        name, requires = "bare-x", ("ai_no_such_runtime",)

    assert "pip install 'hal-npu-plugin[runtime]'" in Npu().missing_runtime()
    assert "pip install ai-no-such-runtime" in Bare().missing_runtime()
    assert Backend().missing_runtime() is None


def test_torch_to_tflite_is_an_ordinary_converter():
    import hal
    import hal.plugin
    from hal.formats import plan

    pytest.importorskip("litert_torch", reason="litert-torch (the edgetpu extra) is not installed")
    chain = plan("torch.nn", ("tflite",), hal.plugin.registry().converters)
    assert [c.name for c in chain] == ["litert_torch.convert"]


# --- the plugin contract: API version, hooks, outputs, precisions, threads (#25) ------------------
_GOOD = '''
from hal import Device
from hal.plugin import Backend, hookimpl
{decl}

class B(Backend):
    name = "{backend}"
    precisions = ("fp32",)

    def probe(self):
        return [Device(self.name, "cpu", "test", precisions=self.precisions)]

{marker}
def {hook}(register):
    register(B())
'''
_made = iter(range(10**6))


@pytest.fixture
def throwaway(tmp_path, monkeypatch):
    """Plugins written into ``tmp_path`` the way ``pip install --target`` lays them out (a
    module and a dist-info with its entry point), rediscovered alone in this process; the
    process's registry is restored afterwards."""
    import importlib

    import hal.plugins as hp

    saved = hp._registry
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def make(name: str, source: str, attr: str | None = None) -> None:
        mod = f"hal_throwaway_{name.replace('-', '_')}_{next(_made)}"
        (tmp_path / f"{mod}.py").write_text(source)
        dist = tmp_path / f"{mod}-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {mod}\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text(f"[hal]\n{name} = {mod}{':' + attr if attr else ''}\n")
        names.append(name)

    def discover():
        importlib.invalidate_caches()
        reg = hp.discover(only=list(names))
        return {i.name: i for i in reg.plugins}, reg

    make.discover = discover
    yield make
    hp._registry = saved


def _backend_plugin(backend: str, decl: str = "HAL_PLUGIN_API = 2", hook: str = "register_backends",
                    marker: str = "@hookimpl") -> str:
    return _GOOD.format(decl=decl, backend=backend, hook=hook, marker=marker)


def test_a_plugin_of_another_api_is_listed_broken_and_the_others_load(throwaway):
    from hal.plugin import API_VERSION

    assert API_VERSION == 2
    throwaway("apiv-old", _backend_plugin("apiv_old", "HAL_PLUGIN_API = 1"))
    throwaway("apiv-new", _backend_plugin("apiv_new", "HAL_PLUGIN_API = 99"))
    throwaway("apiv-str", _backend_plugin("apiv_str", 'HAL_PLUGIN_API = "2"'))
    throwaway("apiv-ok", _backend_plugin("apiv_ok"))
    throwaway("apiv-none", _backend_plugin("apiv_none", ""))
    infos, reg = throwaway.discover()
    old, new, text = infos["apiv-old"], infos["apiv-new"], infos["apiv-str"]
    assert not old.loaded and old.api == 1
    assert "plugin API 1" in old.error and f"speaks API {API_VERSION}" in old.error
    assert "update the plugin" in old.error and "writing-a-backend.md" in old.error
    assert not new.loaded and new.api == 99 and "upgrade hal" in new.error
    assert not text.loaded and "not an int" in text.error
    ok, none = infos["apiv-ok"], infos["apiv-none"]
    assert ok.loaded and ok.api == API_VERSION and ok.error is None and ok.warning is None
    assert none.loaded and none.api is None and "declares no HAL_PLUGIN_API" in none.warning
    # a refused plugin's hooks never ran; the others registered as usual
    assert {"apiv_ok", "apiv_none"} <= set(reg.backends)
    assert not {"apiv_old", "apiv_new", "apiv_str"} & set(reg.backends)
    assert ok.backends == ["apiv_ok"] and old.backends == []


def test_a_module_object_entry_point_reads_its_module_declaration(throwaway):
    source = _backend_plugin("apiv_obj", marker="@hookimpl").replace(
        "def register_backends", "def _register") + (
        "\nfrom types import SimpleNamespace\nplugin = SimpleNamespace(register_backends=_register)\n")
    throwaway("apiv-obj", source, attr="plugin")
    infos, reg = throwaway.discover()
    assert infos["apiv-obj"].loaded and infos["apiv-obj"].api == 2 and "apiv_obj" in reg.backends


def test_a_misspelled_hook_is_broken_with_the_known_hooks(throwaway):
    from hal.plugins import HOOKS

    throwaway("apiv-typo", _backend_plugin("apiv_typo", hook="register_backend"))
    half = _backend_plugin("apiv_half") + (
        "\n@hookimpl\ndef register_formatz(register):\n    pass\n")
    throwaway("apiv-half", half)
    throwaway("apiv-fine", _backend_plugin("apiv_fine"))
    infos, reg = throwaway.discover()
    typo = infos["apiv-typo"]
    assert not typo.loaded and "register_backend," in typo.error and "misspelled" in typo.error
    assert all(h in typo.error for h in HOOKS)
    # a plugin with one good and one misspelled hook registers nothing
    assert not infos["apiv-half"].loaded and "register_formatz" in infos["apiv-half"].error
    assert "apiv_half" not in reg.backends
    assert infos["apiv-fine"].loaded and "apiv_fine" in reg.backends


def test_hook_mistakes_pluggy_would_let_pass_or_bury(throwaway):
    throwaway("apiv-bare", _backend_plugin("apiv_bare", marker=""))  # no @hookimpl: never called
    throwaway("apiv-args", _backend_plugin("apiv_args").replace("(register):\n    register(",
                                                                "(reg):\n    reg("))
    throwaway("apiv-raises", "def __getattr__(name):\n    raise RuntimeError('boom')\n")
    infos, reg = throwaway.discover()
    bare = infos["apiv-bare"]
    assert bare.loaded and "without @hookimpl" in bare.warning and "apiv_bare" not in reg.backends
    args = infos["apiv-args"]
    assert not args.loaded and "PluginValidationError" not in args.error
    assert "register_backends(reg)" in args.error and "'reg'" in args.error  # pluggy's reason, one line
    assert not infos["apiv-raises"].loaded
    assert "HAL_PLUGIN_API failed: RuntimeError: boom" in infos["apiv-raises"].error


def test_builtin_plugins_declare_this_api(monkeypatch):
    import hal.plugins as hp

    saved = hp._registry
    monkeypatch.delenv("HAL_PLUGINS", raising=False)
    try:
        infos = {i.name: i for i in hp.discover().plugins}
    finally:
        hp._registry = saved
    for name in ("reference", "openvino", "edgetpu", "tpu", "cuda", "conformance"):
        assert infos[name].loaded and infos[name].api == hp.API_VERSION and infos[name].warning is None, \
            infos[name]


def test_hal_plugins_lists_a_plugin_of_another_api(tmp_path):
    mod = tmp_path / "hal_old_api_plugin.py"
    mod.write_text(_backend_plugin("oldapi", "HAL_PLUGIN_API = 1"))
    dist = tmp_path / "hal_old_api_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hal-old-api-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[hal]\noldapi = hal_old_api_plugin\n")
    infos = {i["name"]: i for i in hal_json(tmp_path, "plugins", HAL_PLUGINS="oldapi,reference")}
    assert not infos["oldapi"]["loaded"] and infos["oldapi"]["api"] == 1
    assert "written for hal plugin API 1" in infos["oldapi"]["error"]
    assert infos["reference"]["loaded"] and infos["reference"]["api"] == 2
    table = subprocess.run([sys.executable, "-m", "hal.cli", "plugins"], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "PYTHONPATH": str(tmp_path),
                                             "HAL_PLUGINS": "oldapi", "COLUMNS": "300"})
    assert table.returncode == 0 and "speaks plugin API 2" in table.stdout
    assert "written for hal plugin API 1" in table.stdout


def _runner(outputs, returns):
    import hal
    from hal.plugin import ExecutableInfo, Runner, TensorSpec

    info = ExecutableInfo("tb", "1", "tb:cpu", "hardware", "fp32", [TensorSpec("x", (2,), "float32")],
                          [TensorSpec(n, (2,), dt) for n, dt in outputs])

    class R(Runner):
        thread_safe = True

        def infer(self, inputs):
            return returns(inputs[0])

    return hal.Executable(R(info, hal.Device("tb", "cpu", "test", precisions=("fp32",))))


def test_outputs_must_match_the_declared_count_and_dtypes():
    import numpy as np

    import hal

    x = np.ones(2, np.float32)
    both = [("y", "float32"), ("top", "int64")]
    exe = _runner(both, lambda a: (a * 2, a.astype(np.int64)))  # a tuple is fine
    y, top = exe(x)
    assert y.dtype == np.float32 and top.dtype == np.int64
    assert exe.submit(x).result()[1].dtype == np.int64
    for wrong, says in [(lambda a: [a * 2, a * 2], "float32, ndarray float32]"),  # int64 declared
                        (lambda a: [a * 2], "returned 1 output(s)"),
                        (lambda a: a * 2, "object of type ndarray, not a list"),
                        (lambda a: [a * 2, [1, 1]], "output(s) [ndarray float32, list]")]:
        exe = _runner(both, wrong)
        for call in (lambda: exe(x), lambda: exe.run([x]), lambda: exe.submit(x).result()):
            with pytest.raises(hal.HalError, match="bug in the tb plugin") as e:
                call()
            assert type(e.value) is hal.HalError and says in str(e.value) and "top: int64" in str(e.value)


def test_a_device_offers_exactly_what_it_lists():
    import hal
    from hal.plugin import Backend

    class B(Backend):
        name, precisions = "tb", ("fp32", "fp16")

    listed = hal.Device("tb", "a", "lists fp32", precisions=("fp32",))
    silent = hal.Device("tb", "b", "lists nothing")
    assert B().precisions_for(listed) == ("fp32",)
    assert B().precisions_for(silent) == ()  # never the class attribute's every precision
    assert "use one of: none" in str(B().refuse_precision("fp32", silent))


def test_host_threads_is_this_process_share(monkeypatch):
    from hal.plugin import host_cores, host_threads

    cores = host_cores()
    for value, want in [("1", 1), (str(cores + 5), cores), ("", cores), ("0", cores), ("two", cores),
                        ("-1", cores), ("\u0662", cores)]:
        monkeypatch.setenv("HAL_THREADS", value)
        assert host_threads() == want, value
    monkeypatch.delenv("HAL_THREADS")
    assert host_threads() == cores


def test_conformance_workers_get_their_share_of_the_cores(monkeypatch, tmp_path):
    from hal_conformance.process import BackendRun, WorkerPool

    for var in ("HAL_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    shared = BackendRun("reference", tmp_path / "w.log", None, 1, 1, threads=3).worker_env()
    assert shared["HAL_THREADS"] == shared["OMP_NUM_THREADS"] == shared["MKL_NUM_THREADS"] == "3"
    assert "HAL_THREADS" not in BackendRun("reference", tmp_path / "w.log", None, 1, 1).worker_env()
    monkeypatch.setenv("HAL_THREADS", "1")  # the caller's own setting is kept
    assert BackendRun("reference", tmp_path / "w.log", None, 1, 1, threads=3).worker_env()["HAL_THREADS"] == "1"
    pool = WorkerPool(tmp_path, None, 1, 1, jobs=2)
    assert pool.threads == max(1, (os.cpu_count() or 1) // 2)


def test_an_option_value_is_one_usage_error_even_when_its_check_raises():
    import hal
    from hal.plugin import Option, check_options

    opt = Option("a dict with key x", dict, check=lambda v: None if v["x"] else "has a false x")
    check_options("tb", {"k": opt}, {"k": {"x": 1}})
    for value, says in [({"x": 0}, "has a false x"), ({}, "refused by its check (KeyError: 'x')"),
                        ([1], "is a list, not a dict")]:
        with pytest.raises(hal.UsageError, match="tb option k") as e:
            check_options("tb", {"k": opt}, {"k": value})
        assert says in str(e.value) and "Fix: k: a dict with key x" in str(e.value)
