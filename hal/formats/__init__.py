"""Model formats, converters, and the planner that chains converters.

Formats and converters are contributed by plugins (``register_formats``,
``register_converters``); the built-in ones live in :mod:`hal.formats.builtin`
and import their frameworks only when used.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import hashlib
import os
import shutil
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import stage
from ..errors import HalError, ModelFormatError, NoConversionPath, brief, printable
from ..packages import install_hint, missing
from ..paths import require_inside, require_tree_inside
from ..types import CompileOptions

#: file suffixes that are Python pickles: never loaded.
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin.pt")


@dataclass(frozen=True)
class Format:
    """A model representation: how to recognise it and how to read and hash it."""

    name: str
    description: str
    suffixes: tuple[str, ...] = ()
    #: in-memory object test; must not import a framework (compare type names).
    detect: Callable[[Any], bool] | None = None
    #: path test beyond the suffix (e.g. a SavedModel directory).
    sniff: Callable[[Path], bool] | None = None
    #: path → in-memory value; raise ModelFormatError on a bad file.
    read: Callable[[Path], Any] | None = None
    #: value → bytes that change whenever what runs changes (cache key); raises
    #: :class:`Unkeyable` when it cannot tell, and the compile goes uncached.
    fingerprint: Callable[[Any], bytes] | None = None
    #: path → every file a model on disk consists of (an IR's .bin, ONNX external
    #: data); its key hashes their stored bytes. Default: the file, or a folder's files.
    files: Callable[[Path], list[Path]] | None = None
    #: (value, example inputs) → the model's own I/O names and output structure
    #: (:class:`hal.signature.Signature`), stamped on every backend's executable
    signature: Callable[[Any, Any], Any] | None = None
    #: (value, {name: array}) → (the value to compile, the arrays in its input order): how
    #: example inputs given by name bind to the model when its format cannot take them as
    #: they are (an ``nn.Module`` is exported by keyword). Default: the signature's names.
    bind: Callable[[Any, dict], tuple[Any, tuple]] | None = None
    #: value → what makes it a pre-quantized model ("12 QuantizeLinear ops"), or None:
    #: such a model compiles as int8 only, without calibration data
    quantized: Callable[[Any], str | None] | None = None
    requires: tuple[str, ...] = ()
    #: what installs ``requires``: hal's extra, or a plugin's own pip requirement
    extra: str | None = None
    install: str | None = None


@dataclass(frozen=True)
class Converter:
    """One well-kept conversion step, e.g. ``torch.nn → onnx`` via torch.onnx."""

    name: str
    source: str
    target: str
    convert: Callable[["Model", CompileOptions], Any]
    requires: tuple[str, ...] = ()
    extra: str | None = None
    install: str | None = None
    cost: int = 1

    def missing(self) -> list[str]:
        return missing(self.requires)


@dataclass
class Model:
    """A model in one format: its value, the file it came from, and one example input."""

    format: str
    value: Any
    path: Path | None = None
    example_input: tuple | None = None
    #: made by a converter during this compile (so the backend may change it in place),
    #: not the caller's own object
    converted: bool = False
    _fingerprint: str | None = None

    def digest(self, formats: dict[str, Format]) -> str:
        """The model part of the cache key. A file model is keyed by its stored
        bytes, streamed (never by what loading it built: a ``.pt2`` may declare
        terabytes it does not store); an in-memory one by its format's
        fingerprint. Raises :class:`Unkeyable` when neither can say what runs."""
        if self._fingerprint is None:
            h = hashlib.sha256(self.format.encode())
            fmt = formats.get(self.format)
            if self.path is not None:
                files = fmt.files(self.path) if fmt is not None and fmt.files else None
                h.update(hash_path(self.path, files))
            elif fmt is not None and fmt.fingerprint is not None:
                h.update(fmt.fingerprint(self.value))
            else:
                raise Unkeyable(f"hal cannot fingerprint a {self.format} model")
            self._fingerprint = h.hexdigest()
        return self._fingerprint


class Unkeyable(Exception):
    """The cache key cannot capture everything that runs: compile uncached."""


def hash_path(path: Path, files: list[Path] | None = None) -> bytes:
    """sha256 of the files' names (relative to ``path``'s folder) and stored
    bytes, read in 1 MiB chunks. ``files`` defaults to ``path`` itself, or
    every file under a folder."""
    path = Path(path)
    base = path if path.is_dir() else path.parent
    if files is None:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        name = os.path.relpath(f, base).encode()
        h.update(len(name).to_bytes(8, "little") + name + f.stat().st_size.to_bytes(8, "little"))
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.digest()


def identify(model: Any, formats: dict[str, Format]) -> Model:
    """Wrap an in-memory model or a path in a :class:`Model` of a known format."""
    if isinstance(model, Model):
        return model
    if isinstance(model, (str, os.PathLike)):
        return _identify_path(Path(model), formats)
    if isinstance(model, (bytes, bytearray)):
        for fmt in formats.values():
            if fmt.detect and fmt.detect(bytes(model)):
                return Model(fmt.name, bytes(model))
        raise ModelFormatError("these bytes are not a model hal recognises",
                               "pass a path, or bytes of a TFLite flatbuffer")
    for fmt in formats.values():
        if fmt.detect and fmt.detect(model):
            return Model(fmt.name, model)
    raise ModelFormatError(
        f"hal does not know models of type {type(model).__module__}.{type(model).__name__}",
        f"pass one of: {', '.join(sorted(formats))} (or a file of one)",
    )


def _identify_path(path: Path, formats: dict[str, Format]) -> Model:
    if not path.exists():
        raise ModelFormatError(f"{path} does not exist", "check the path")
    name = path.name.lower()
    if name.endswith(PICKLE_SUFFIXES):
        raise ModelFormatError(
            f"{path} is a Python pickle; hal never unpickles model files",
            "export it with torch.export.save (.pt2), to ONNX, or save weights as safetensors",
        )
    if path.is_file() and path.stat().st_size == 0:
        raise ModelFormatError(f"{path} is empty", "re-export the model")
    for fmt in formats.values():
        hit = (fmt.sniff(path) if fmt.sniff else False) or (
            path.is_file() and fmt.suffixes and name.endswith(fmt.suffixes))
        if hit:
            absent = missing(fmt.requires)
            if absent:
                raise NoConversionPath(f"reading {fmt.name} models needs {', '.join(absent)}",
                                       install_hint(absent, fmt.extra, fmt.install))
            _check_folder(path, fmt)
            value = fmt.read(path) if fmt.read else path
            return Model(fmt.name, value, path=path)
    known = sorted({s for f in formats.values() for s in f.suffixes})
    raise ModelFormatError(
        f"{path} is not a model format hal recognises",
        f"pass a file ending in one of {', '.join(known)}, or a SavedModel directory",
    )


def _check_folder(path: Path, fmt: Format) -> None:
    """The folder rule (:mod:`hal.paths`) before any reader opens the model: a
    folder model's every entry, and a file model's companions (``Format.files``),
    resolve inside the model's own folder."""
    what = f"the {fmt.name} model {printable(path.name, 80)}"
    if path.is_dir():
        require_tree_inside(path, ModelFormatError, what)
    elif fmt.files is not None:
        try:
            files = fmt.files(path)
        except HalError:
            raise
        except Exception as e:  # noqa: BLE001 - the format's own parser
            if fmt.read is not None:
                fmt.read(path)  # raises the format's own error for a damaged file
            raise ModelFormatError(f"{path} is not a readable {fmt.name} model (empty, truncated or "
                                   f"corrupt: {brief(e, 160)})", "re-export it") from None
        require_inside(path.parent, [f for f in files if f != path], ModelFormatError, what)


_scope: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("hal_scratch", default=None)


@contextlib.contextmanager
def scratch_scope() -> Iterator[None]:
    """Remove every :func:`scratch_dir` made inside the block when it ends: the
    core wraps each compile in one, so converted files never outlive it."""
    token = _scope.set([])
    try:
        yield
    finally:
        for d in _scope.get() or ():
            shutil.rmtree(d, ignore_errors=True)
        _scope.reset(token)


def scratch_dir(prefix: str) -> Path:
    """A temp dir for converted files. Inside a compile it lives until that
    compile ends; outside one (a converter called directly), until exit."""
    d = tempfile.mkdtemp(prefix=prefix)
    owned = _scope.get()
    if owned is not None:
        owned.append(d)
    else:
        atexit.register(shutil.rmtree, d, True)
    return Path(d)


def plan(source: str, targets: tuple[str, ...], converters: list[Converter]) -> list[Converter]:
    """Shortest chain of converters from ``source`` to the first reachable format
    of ``targets`` (earlier targets win ties). Raises NoConversionPath naming
    what to install when the only chains need missing packages."""
    if source in targets:
        return []
    best = _bfs(source, targets, [c for c in converters if not c.missing()])
    if best is not None:
        return best
    hypothetical = _bfs(source, targets, converters)
    if hypothetical is not None:
        needs = sorted({m for c in hypothetical for m in c.missing()})
        lacking = [c for c in hypothetical if c.missing()]
        extras = sorted({c.extra for c in lacking if c.extra and not c.install})
        fix = "; ".join([install_hint([], ",".join(extras))] * bool(extras) +
                        [install_hint(c.missing(), None, c.install) for c in lacking
                         if c.install or not c.extra])
        raise NoConversionPath(
            f"converting {source} to {' or '.join(targets)} needs {', '.join(needs)} "
            f"({' → '.join(c.name for c in hypothetical)})",
            fix,
        )
    raise NoConversionPath(
        f"no converter chain turns a {source} model into {' or '.join(targets)}",
        "export the model to a format this target accepts, or choose another target",
    )


def _bfs(source: str, targets: tuple[str, ...], convs: list[Converter]) -> list[Converter] | None:
    order = {t: i for i, t in enumerate(targets)}
    seen = {source: []}
    queue = deque([source])
    found: list[list[Converter]] = []
    while queue:
        fmt = queue.popleft()
        for c in sorted(convs, key=lambda c: c.cost):
            if c.source == fmt and c.target not in seen:
                seen[c.target] = seen[fmt] + [c]
                queue.append(c.target)
                if c.target in order:
                    found.append(seen[c.target])
    if not found:
        return None
    return min(found, key=lambda p: (sum(c.cost for c in p), order[p[-1].target]))


def convert(model: Model, chain: list[Converter], options: CompileOptions) -> Model:
    for conv in chain:
        # leaving the framework through its own exporter (torch.export, torch.onnx) is an
        # export; a vendor's importer (ov.convert_model, litert-torch) converts
        with stage("export" if conv.name.startswith(("torch.", "keras.")) else "convert"):
            value = conv.convert(model, options)
        model = Model(conv.target, value, example_input=model.example_input, converted=True)
    return model
