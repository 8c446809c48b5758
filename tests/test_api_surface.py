"""The public surface (issue #12): two doors, one word per idea, no import cycle.

These check the shape of the API a user and a plugin author meet, and that the
conformance CLI arrives as an ordinary plugin through ``register_commands``."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hal
import hal.plugin

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"hal": ROOT / "hal", "hal_backends": ROOT / "backends",
            "hal_conformance": ROOT / "conformance"}


def test_the_application_door_holds_no_plugin_author_names():
    author_only = {"Backend", "CompileOptions", "ExecutableInfo", "TensorSpec", "hookimpl",
                   "registry", "discover", "resolve", "Format", "Converter", "Model"}
    assert not author_only & set(hal.__all__)
    assert {"compile", "load", "devices", "backends", "Executable", "Device", "Profile",
            "Requirements", "HalError", "UsageError"} <= set(hal.__all__)
    assert author_only <= set(hal.plugin.__all__)
    for name in hal.__all__ + hal.plugin.__all__:
        module = hal if name in hal.__all__ else hal.plugin
        assert getattr(module, name) is not None, name


def test_the_plugin_door_is_sorted_and_documented():
    """A plugin author reads hal.plugin's docstring and help(): every name is listed there,
    and every class and function in the door, and every public method of Backend and
    Runner, says what it does (the third-party IREE author found half of them bare)."""
    import inspect

    names = hal.plugin.__all__
    assert names == sorted(names) and len(set(names)) == len(names)
    assert [n for n in names if f"``{n}``" not in hal.plugin.__doc__] == []
    bare = [n for n in names if callable(getattr(hal.plugin, n))
            and not (inspect.getdoc(getattr(hal.plugin, n)) or "").strip()]
    for cls in (hal.plugin.Backend, hal.plugin.Runner):
        bare += [f"{cls.__name__}.{m}" for m, f in vars(cls).items()
                 if callable(f) and not m.startswith("_") and not (f.__doc__ or "").strip()]
    assert bare == []


def test_builtin_backends_import_only_from_hal_and_hal_plugin():
    """The built-in backends are plugins like any other: what they need from hal comes
    through the two doors (``hal``'s ``__all__`` and ``hal.plugin``), never from hal's
    modules, so a third-party plugin can do all they do. Imports among hal_backends
    (torch_common, mlir_guard, ...) and of other packages are theirs."""
    import hal

    wrong = []
    for path in sorted(PACKAGES["hal_backends"].rglob("*.py")):
        where = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                wrong += [f"{where}:{node.lineno} import {a.name}" for a in node.names
                          if a.name.startswith("hal.") and a.name != "hal.plugin"]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.startswith("hal.") and node.module != "hal.plugin":
                    wrong.append(f"{where}:{node.lineno} from {node.module} import ...")
                elif node.module == "hal":  # `from hal import cache` reaches a module the same way
                    wrong += [f"{where}:{node.lineno} from hal import {a.name}" for a in node.names
                              if a.name not in hal.__all__]
    assert wrong == [], "re-export what a plugin needs from hal.plugin instead:\n" + "\n".join(wrong)


def test_compile_takes_keywords_after_the_target():
    with pytest.raises(TypeError, match="positional"):
        hal.compile("model.onnx", "cpu", "fp32")  # noqa - the point of the test


def test_requirements_do_not_repeat_the_precision():
    assert not hasattr(hal.Requirements(), "precision")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in PACKAGES.items():
        for f in folder.rglob("*.py"):
            rel = f.relative_to(folder).with_suffix("")
            parts = [pkg, *rel.parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every in-project module ``name`` imports, at any depth of the file (lazy ones too)."""
    is_pkg = path.name == "__init__.py"
    base = name if is_pkg else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                up = base.split(".")
                up = up[:len(up) - (node.level - 1)]
                mod = ".".join(up + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def test_no_import_cycle_between_modules():
    """Between modules, not counting a package's import of its own submodules: a cycle
    means two modules that can only be understood together (issue #12 found goldens ↔ runner)."""
    mods = _modules()
    graph = {m: {t for t in _imports(m, p, set(mods)) if not m.startswith(t + ".")}
             for m, p in mods.items()}
    cycles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif not state.get(t):
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if not state.get(m):
            visit(m, [m])
    assert not cycles, cycles


def _hal(*args: str, **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "HAL_PLUGINS"}
    e.update(env)
    return subprocess.run([sys.executable, "-m", "hal.cli", *args], capture_output=True, text=True,
                          env=e, timeout=120)


def test_conformance_command_arrives_through_the_plugin_hook():
    assert "conformance" in _hal("--help").stdout
    # conformance is an ordinary plugin: leave it out and its commands are gone
    p = _hal("--help", HAL_PLUGINS="reference")
    assert p.returncode == 0 and "conformance" not in p.stdout and "lab" not in p.stdout.split()
    # python -m hal_conformance and hal conformance are one command with one set of options
    direct = subprocess.run([sys.executable, "-m", "hal_conformance", "--help"], capture_output=True,
                            text=True, timeout=120)
    flags = lambda text: sorted(w for w in text.split() if w.startswith("--"))  # noqa: E731
    assert flags(direct.stdout) == flags(_hal("conformance", "--help").stdout)


def test_a_broken_register_commands_is_recorded_not_fatal():
    reg = hal.plugin.registry()
    info = hal.plugin.PluginInfo("boom", "test", loaded=True)

    def boom(cli):
        raise RuntimeError("no")

    reg.commands.append((info, boom))
    try:
        import typer

        reg.add_commands(typer.Typer())
    finally:
        reg.commands.remove((info, boom))
    assert not info.loaded and "register_commands failed: RuntimeError: no" in info.error


def test_pytest_options_come_from_the_same_definition():
    from hal_conformance.options import OPTIONS

    p = subprocess.run([sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    for flag in OPTIONS:
        assert (flag.pytest_flag in p.stdout) == flag.pytest, flag.pytest_flag


def test_stage_tags_the_innermost_step():
    from hal.errors import stage_of

    with pytest.raises(hal.CompileError) as e:
        with hal.plugin.stage("compile"):
            with hal.plugin.stage("quantize"):
                raise hal.CompileError("calibration failed", "fix it")
    assert stage_of(e.value) == "quantize"
    with pytest.raises(KeyError) as e2:  # any exception, not only hal's own
        with hal.plugin.stage("export"):
            raise KeyError("x")
    assert stage_of(e2.value) == "export" and stage_of(ValueError(), "run") == "run"
    with pytest.raises(ValueError, match="unknown stage"):
        with hal.plugin.stage("deploy"):
            pass
