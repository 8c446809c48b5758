"""Every shell and Python example in README.md and docs/**/*.md runs, for real, as written.

How a page's fenced blocks are read:

- ```python: the block is written to a file and run by this Python in a subprocess, in a
  fresh temp dir. Each block runs alone: none of today's pages reads as one program spread
  over several blocks. A block that continues the page's previous Python blocks says so with
  ``<!-- doc-test: continues -->`` and runs after them, in one process.
- ```bash, ```sh, ```shell and a bare ```: every line is a command (a trailing ``\\``
  continues it). ```console: only the lines that start with ``$ `` are commands; the rest is
  what they print. Each command is one test, run by bash in the block's temp dir (the lines
  of a block share it, in order), with this Python's bin dir first on PATH, a private
  ``HAL_CACHE_DIR`` and a time limit. It must exit 0.
- ```text, ```toml and any other language: not run (diagrams, printed output, synopses).
  Write output and usage syntax as ```text, so that a bare ``` is always a command.
- A block under ``<!-- file: PATH -->`` quotes a file of the repository: the test checks
  that the file says exactly that (the plugin it quotes is run by test_conformance_plugins).

HTML comments on the lines right above a block steer it (they do not show on the page):

- ``<!-- doc-test: setup=model.pt2,x.npy -->`` puts the named fixtures (see ``SETUP``) in
  the block's dir first.
- ``<!-- doc-test: skip — why -->`` skips the whole block; ``<!-- doc-test: skip "CMD" —
  why -->`` skips the command CMD only. For what cannot run here (a GPU, a TPU, network).
- ``<!-- doc-test: slow — why -->`` (or ``slow "CMD" — why``): what takes minutes here, such
  as the full conformance run. Skipped with that reason unless ``HAL_DOC_TESTS=all``.

Examples that take half a minute or more and do what a cheaper test of the default run already
does are listed in ``FULL`` (page, command or first line of a Python block → the test that
stands for it): they are marked ``full`` and run with ``python -m pytest --full`` (see
tests/conftest.py). A later command of the same block still runs without them, as after a
skipped or slow one.

``pip install`` into the environment is never run (CI's ``.ci/run`` installs the project into
a fresh venv and runs the README's test command itself); ``pip install --target DIR`` is run.
Commands that fail because hal is wrong, not the page, are listed in ``CODE_BUGS`` and
expected to fail (strict: once fixed, the entry must go).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL = {"", "bash", "sh", "shell", "console"}
TIMEOUT_S = 300  # one command
SLOW_TIMEOUT_S = 1200  # one slow command (the full conformance run: 3-6 min on 2 shared cores)

#: commands that fail because of hal, not because of the page: command → why (strict xfail)
#: (e.g. README's `hal profile model.pt2 ... --batch-size 8` was one until the core compiled a
#: static export at the asked batch)
CODE_BUGS: dict[str, str] = {}

#: examples run only with ``--full``: (page, command or first line of a Python block) → the
#: test of the default run that does the same thing
FULL: dict[tuple[str, str], str] = {
    ("docs/onnx-suite.md", "python -m hal_conformance.onnx_suite --target openvino:CPU --native openvino "
                           "--include 'node/test_(relu|col2im)' --json out.json"):
        "the next line runs the same command on reference:cpu; tests/test_onnx_backend.py runs hal → "
        "OpenVINO against OpenVINO called directly",
    ("docs/onnx-suite.md", "import onnx.backend.test"):
        "tests/test_onnx_backend.py runs backend_for's adapter (run_node, run_model, prepare)",
    ("docs/conformance.md", "hal conformance --export-goldens goldens/"):
        "tests/test_conformance.py::test_export_goldens and the goldens tests after it",
    ("docs/writing-a-backend.md", "pytest --hal-backend=example --hal-model=resnet "
                                  "--hal-precision=int8-dynamic -v"):
        "conformance.md's `pytest --hal-backend=reference ...` line; tests/test_conformance_plugins.py "
        "runs the example plugin through the kit and third-party plugins as pytest items",
}


@dataclass
class Command:
    page: str
    line: int
    text: str
    skip: str | None = None  # why it is not run
    slow: str | None = None  # why it is run only with HAL_DOC_TESTS=all
    full: str | None = None  # the default run's test that stands for it (FULL)


@dataclass
class Block:
    page: str
    line: int  # of the opening fence
    lang: str
    text: str
    setup: list[str] = field(default_factory=list)
    skip: str | None = None
    slow: str | None = None
    skip_cmds: dict[str, str] = field(default_factory=dict)
    slow_cmds: dict[str, str] = field(default_factory=dict)
    file: str | None = None
    full: str | None = None  # a Python block in FULL
    continues: bool = False
    commands: list[Command] = field(default_factory=list)


_MARK = re.compile(r"<!--\s*(.*?)\s*-->")
_REASON = re.compile(r'^(skip|slow)\b\s*(?:"([^"]+)")?\s*[—:-]?\s*(.*)$', re.S)


def parse(page: Path) -> list[Block]:
    """The fenced blocks of one page, with the doc-test comments right above each."""
    lines = page.read_text(encoding="utf-8").splitlines()
    rel = page.relative_to(ROOT).as_posix() if page.is_relative_to(ROOT) else page.name
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^```\s*([\w+-]*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1).lower()
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        b = Block(rel, start + 1, lang, "\n".join(lines[start + 1:j]) + "\n")
        k = start - 1
        while k >= 0 and _MARK.fullmatch(lines[k].strip()):
            _apply(b, _MARK.fullmatch(lines[k].strip()).group(1))
            k -= 1
        blocks.append(b)
        i = j + 1
    return blocks


def _apply(b: Block, comment: str) -> None:
    if comment.startswith("file:"):
        b.file = comment[5:].strip()
        return
    if not comment.startswith("doc-test:"):
        return
    body = comment[len("doc-test:"):].strip()
    if body.startswith("setup="):
        b.setup += [s.strip() for s in body[6:].split(",") if s.strip()]
    elif body == "continues":
        b.continues = True
    elif m := _REASON.match(body):
        kind, cmd, why = m.group(1), m.group(2), m.group(3).strip()
        assert why, f"{b.page}:{b.line}: a doc-test {kind} mark must say why"
        if cmd:
            (b.skip_cmds if kind == "skip" else b.slow_cmds)[cmd] = why
        elif kind == "skip":
            b.skip = why
        else:
            b.slow = why
    else:
        raise AssertionError(f"{b.page}:{b.line}: unknown doc-test mark {comment!r}")


def shell_commands(b: Block) -> list[Command]:
    out, pending, first = [], "", 0
    for n, raw in enumerate(b.text.splitlines(), start=b.line + 1):
        line = raw.rstrip()
        if b.lang == "console" and not pending:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        if not line.strip() or (line.lstrip().startswith("#") and not pending):
            continue
        if not pending:
            first = n
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        text = (pending + line.strip()).strip()
        pending = ""
        key = _strip_comment(text)
        cmd = Command(b.page, first, text)
        cmd.skip = b.skip or b.skip_cmds.get(key) or _never_run(key)
        cmd.slow = b.slow or b.slow_cmds.get(key)
        cmd.full = FULL.get((b.page, key))
        out.append(cmd)
    return out


def _strip_comment(text: str) -> str:
    return re.sub(r"\s+#.*$", "", text).strip()


def _never_run(cmd: str) -> str | None:
    """pip installing into this environment is not a doc test's business."""
    for part in re.split(r"&&|\|\||;", cmd):
        words = part.split()
        if "pip" in words and "install" in words and "--target" not in words:
            return ("installs packages into the environment: CI's .ci/run installs the project "
                    "into a fresh venv and runs the README's test command itself")
    return None


BLOCKS = [b for page in PAGES for b in parse(page)]
for _b in BLOCKS:
    if _b.lang in SHELL and not _b.file:
        _b.commands = shell_commands(_b)
for _b in BLOCKS:
    for _cmd in set(_b.skip_cmds) | set(_b.slow_cmds):
        assert any(_strip_comment(c.text) == _cmd for c in _b.commands), \
            f"{_b.page}:{_b.line}: the mark names {_cmd!r}, which the block does not run"
    if _b.lang == "python" and not _b.file and _b.text.strip():
        _b.full = FULL.get((_b.page, _b.text.strip().splitlines()[0]))
for _page, _what in FULL:  # an entry that names nothing would leave its example in the default run
    assert any(b.page == _page and (any(_strip_comment(c.text) == _what for c in b.commands)
                                    or (b.full and b.text.strip().splitlines()[0] == _what))
               for b in BLOCKS), f"FULL names {_page}: {_what!r}, which no example of that page is"


# --- fixtures the examples name -----------------------------------------------------------
def _readme_model():
    """The README's 30-second model, with fixed weights."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(8 * 30 * 30, 10)).eval()


def _make_x(d: Path) -> None:
    import numpy as np

    np.save(d / "x.npy", np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32))


def _make_calib(d: Path) -> None:
    import numpy as np

    np.save(d / "calib.npy", np.random.default_rng(1).random((16, 3, 32, 32), dtype=np.float32))


def _make_pt2(d: Path) -> None:
    import torch

    x = torch.rand(1, 3, 32, 32)
    torch.export.save(torch.export.export(_readme_model(), (x,)), str(d / "model.pt2"))


def _make_onnx(d: Path) -> None:
    import torch

    pytest.importorskip("onnxscript", reason="torch.onnx.export needs onnxscript")
    torch.onnx.export(_readme_model(), (torch.rand(1, 3, 32, 32),), str(d / "model.onnx"),
                      dynamo=True, verbose=False)


def _make_plugin_source(d: Path) -> None:
    """docs/writing-a-backend.md's plugin, where the page's commands look for it."""
    dst = d / "path" / "to" / "hal-example-backend"
    shutil.copytree(ROOT / "tests" / "plugins" / "hal-example-backend", dst,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))


def _make_plugin_site(d: Path) -> None:
    """The example plugin installed as the page says, but into a private folder that the
    block's commands get on PYTHONPATH: the environment itself is left alone."""
    pytest.importorskip("onnxruntime", reason="the example plugin runs on ONNX Runtime")
    _make_plugin_source(d)
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--no-build-isolation", "--no-index", "--target", str(d / ".site"),
                          str(d / "path" / "to" / "hal-example-backend")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


#: name in ``setup=`` → what makes it (in a session cache, then copied per block)
SETUP = {"x.npy": _make_x, "calib.npy": _make_calib, "model.pt2": _make_pt2,
         "model.onnx": _make_onnx, "hal-example-backend": _make_plugin_source,
         "example-plugin": _make_plugin_site}


@pytest.fixture(scope="session")
def made(tmp_path_factory):
    """Each fixture made once per session."""
    pytest.importorskip("torch", reason="the examples' models are PyTorch models")
    root = tmp_path_factory.mktemp("doc-fixtures")
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        assert name in SETUP, f"unknown doc-test setup {name!r} (known: {', '.join(SETUP)})"
        if name not in done:
            d = root / name
            d.mkdir()
            SETUP[name](d)
            done[name] = d
        return done[name]

    return get


@pytest.fixture(scope="session")
def doc_env(tmp_path_factory) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["HAL_CACHE_DIR"] = str(tmp_path_factory.mktemp("doc-cache"))
    env.pop("HAL_PLUGINS", None)
    return env


class BlockRun:
    """A shell block's commands, run in order in one dir, each at most once."""

    def __init__(self, block: Block, d: Path, env: dict[str, str], full: bool) -> None:
        self.block, self.dir, self.env, self.full = block, d, env, full
        self.results: dict[int, subprocess.CompletedProcess | str] = {}

    def upto(self, idx: int) -> subprocess.CompletedProcess | str:
        for i, cmd in enumerate(self.block.commands[:idx + 1]):
            if i not in self.results:
                self.results[i] = self._run(cmd)
        return self.results[idx]

    def _run(self, cmd: Command) -> subprocess.CompletedProcess | str:
        if cmd.skip or (cmd.slow and not _run_slow()) or (cmd.full and not self.full):
            return "not run"
        limit = SLOW_TIMEOUT_S if cmd.slow else TIMEOUT_S
        try:
            return subprocess.run(["bash", "-c", cmd.text], cwd=self.dir, env=self.env,
                                  capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            return f"timed out after {limit} s"


def _run_slow() -> bool:
    return os.environ.get("HAL_DOC_TESTS") == "all"


@pytest.fixture(scope="session")
def block_runs(tmp_path_factory, made, doc_env, full_tests):
    runs: dict[int, BlockRun] = {}

    def get(b: Block) -> BlockRun:
        key = id(b)
        if key not in runs:
            d = tmp_path_factory.mktemp("doc-block")
            env = dict(doc_env)
            for name in b.setup:
                shutil.copytree(made(name), d, dirs_exist_ok=True)
                if (d / ".site").exists():
                    env["PYTHONPATH"] = os.pathsep.join(
                        [str(d / ".site")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
            runs[key] = BlockRun(b, d, env, full_tests)
        return runs[key]

    return get


def _id(page: str, line: int, text: str) -> str:
    short = re.sub(r"\s+", " ", text)[:60]
    return f"{page}:{line}:{short}"


def _shell_params():
    for b in BLOCKS:
        for i, cmd in enumerate(b.commands):
            marks = []
            if cmd.skip:
                marks.append(pytest.mark.skip(reason=cmd.skip))
            elif cmd.slow and not _run_slow():
                marks.append(pytest.mark.skip(reason=f"slow (HAL_DOC_TESTS=all runs it): {cmd.slow}"))
            elif cmd.slow:
                marks.append(pytest.mark.timeout(2 * SLOW_TIMEOUT_S))
            if cmd.full:
                marks.append(pytest.mark.full)
            bug = CODE_BUGS.get(_strip_comment(cmd.text))
            if bug:
                marks.append(pytest.mark.xfail(reason=bug, strict=True))
            yield pytest.param(b, i, id=_id(cmd.page, cmd.line, cmd.text), marks=marks)


def _python_params():
    for b in BLOCKS:
        if b.lang == "python" and not b.file:
            marks = [pytest.mark.skip(reason=b.skip)] if b.skip else []
            if b.slow and not b.skip and not _run_slow():
                marks.append(pytest.mark.skip(reason=f"slow (HAL_DOC_TESTS=all runs it): {b.slow}"))
            if b.full:
                marks.append(pytest.mark.full)
            yield pytest.param(b, id=_id(b.page, b.line, b.text.strip().splitlines()[0]), marks=marks)


def _file_params():
    for b in BLOCKS:
        if b.file:
            yield pytest.param(b, id=f"{b.page}:{b.line}:{b.file}")


# --- the tests ----------------------------------------------------------------------------
def test_pages_have_examples():
    """The reader works: it finds the README's examples (a parser that finds nothing
    would pass every page)."""
    readme = [b for b in BLOCKS if b.page == "README.md"]
    assert any(b.lang == "python" for b in readme)
    assert any("hal devices" in c.text for b in readme for c in b.commands)


@pytest.mark.parametrize("block,idx", list(_shell_params()))
def test_shell_example(block: Block, idx: int, block_runs):
    res = block_runs(block).upto(idx)
    cmd = block.commands[idx]
    assert not isinstance(res, str), f"{cmd.page}:{cmd.line}: {cmd.text}: {res}"
    assert res.returncode == 0, (f"{cmd.page}:{cmd.line}: `{cmd.text}` exited {res.returncode}\n"
                                 f"--- stdout (tail)\n{res.stdout[-3000:]}\n"
                                 f"--- stderr (tail)\n{res.stderr[-3000:]}")


@pytest.mark.parametrize("block", list(_python_params()))
def test_python_example(block: Block, tmp_path, made, doc_env):
    for name in block.setup:
        shutil.copytree(made(name), tmp_path, dirs_exist_ok=True)
    same_page = [b for b in BLOCKS if b.page == block.page and b.lang == "python" and not b.file]
    code = block.text
    if block.continues:
        before = [b for b in same_page if b.line < block.line]
        code = "\n".join(b.text for b in before) + "\n" + code
    (tmp_path / "example.py").write_text(code, encoding="utf-8")
    res = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=doc_env,
                         capture_output=True, text=True, timeout=TIMEOUT_S)
    assert res.returncode == 0, (f"{block.page}:{block.line} exited {res.returncode}\n"
                                 f"{res.stdout[-2000:]}\n{res.stderr[-4000:]}")


@pytest.mark.parametrize("block", list(_file_params()))
def test_quoted_file(block: Block):
    path = ROOT / block.file
    assert path.is_file(), f"{block.page}:{block.line} quotes {block.file}, which does not exist"
    assert path.read_text(encoding="utf-8") == block.text, f"{block.page}:{block.line}: {block.file} differs"


def test_marks_are_parsed(tmp_path):
    """The comment syntax this file documents is the one it reads."""
    page = tmp_path / "marks.md"
    page.write_text("<!-- doc-test: setup=x.npy,model.pt2 -->\n"
                    '<!-- doc-test: slow "hal conformance" — the full run takes minutes -->\n'
                    "```\nhal devices   # a table\nhal conformance\npip install -e .\n"
                    "python -m pip install --target d x && hal plugins\n```\n"
                    "<!-- doc-test: skip — needs a CUDA GPU -->\n```console\n$ hal run m.hal \\\n"
                    "  --input x.npy\nprinted output\n```\n```text\nhal devices\n```\n")
    a, b, c = parse(page)
    cmds = shell_commands(a)
    assert a.setup == ["x.npy", "model.pt2"] and [x.text for x in cmds] == [
        "hal devices   # a table", "hal conformance", "pip install -e .",
        "python -m pip install --target d x && hal plugins"]
    assert [x.slow is not None for x in cmds] == [False, True, False, False]
    assert [x.skip is not None for x in cmds] == [False, False, True, False]
    cmds = shell_commands(b)
    assert [x.text for x in cmds] == ["hal run m.hal --input x.npy"]
    assert cmds[0].skip == "needs a CUDA GPU"
    assert c.lang == "text" and c.lang not in SHELL
