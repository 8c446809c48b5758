"""The cache key of a torch ``nn.Module``: a canonical walk of what runs.

Why a walk and not ``torch.export``: the reference backend runs modules eagerly
(data-dependent branches export refuses), and a walk is cheap on a cache hit,
where exporting would cost as much as the compile it saves. Why not ``repr`` or
``state_dict``: neither shows a plain attribute used in ``forward``
(``self.scale``), a config flag, ``module.training`` of a submodule, or a hook.

What is hashed, for every submodule: its class (below), every ``__dict__``
entry but torch's backward/state-dict hook bookkeeping (forward hooks run, so
they count), every parameter and buffer by dtype, shape and bytes, and
torch's global forward hooks. Values are read canonically: numbers, strings,
bytes, None, tuples/lists/dicts/sets (recursively), tensors and numpy arrays by
dtype+shape+bytes, torch dtypes/devices, enums, functions (code, defaults,
closure, the globals their code names), bound methods, ``functools.partial``,
and plain Python objects (``PretrainedConfig``, dataclasses) by their class and
their whole pickle state (only when it is their ``__dict__``/slots: objects
holding C state are not plain). Anything else in a module's state makes the
key unsound: :class:`~hal.formats.Unkeyable` is raised and the compile runs
uncached with a note, rather than guess.

Classes and functions: an installed library's (torch, transformers, ...) by
module + qualname + the library's version + its source file's size and mtime
(a re-install changes it); the user's own by their bytecode, constants, and
the globals it names. Objects in *code's* environment (a class attribute, a
module global) that cannot be read are keyed by their type alone: code cannot
be walked without end, and a module state is what changes between models.
"""

from __future__ import annotations

import copyreg
import enum
import functools
import hashlib
import os
import struct
import sys
import sysconfig
import types
from typing import Any

from . import Unkeyable

#: nn.Module.__dict__ entries that never change what a forward pass computes
_BOOKKEEPING = frozenset({
    "_backward_pre_hooks", "_backward_hooks", "_is_full_backward_hook", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks"})
#: forward hook dicts and the flag dicts keyed by the same handle ids
_HOOKS = {"_forward_pre_hooks": ("_forward_pre_hooks_with_kwargs",),
          "_forward_hooks": ("_forward_hooks_with_kwargs", "_forward_hooks_always_called")}
_HOOK_FLAGS = frozenset(f for fs in _HOOKS.values() for f in fs)
_CHILDREN = ("_parameters", "_buffers", "_modules")
#: class __dict__ entries that are not behaviour
_CLASS_TRIVIA = frozenset({
    "__module__", "__qualname__", "__doc__", "__dict__", "__weakref__", "__annotations__",
    "__annotate__", "__firstlineno__", "__static_attributes__", "__orig_bases__",
    "__parameters__", "_abc_impl", "__slots__", "__abstractmethods__",
    "__slotnames__"})  # copyreg caches it on the class when an instance is first reduced
_LIMIT = 2_000_000  # values walked before giving up (a pathological object graph)


def fingerprint(module) -> bytes:
    """sha256 over a canonical walk of ``module`` (see the module docstring)."""
    import torch

    w = _Walker(torch)
    w.emit(b"torch", torch.__version__.encode())
    g = vars(torch.nn.modules.module)
    try:
        for k, flags in _HOOKS.items():
            w.hooks(g.get("_global" + k), [g.get("_global" + f) for f in flags], "torch's global hooks")
        w.value(module, strict=True, where="model")
    except _Opaque as e:
        raise Unkeyable(str(e)) from None
    return w.digest()


def class_key(cls: type) -> bytes:
    """sha256 of a class as :func:`fingerprint` keys it (e.g. a Keras layer's):
    identity, and the code of every class in its MRO (torch not imported)."""
    w = _Walker(sys.modules.get("torch"))
    w.value(cls, strict=False, where=cls.__qualname__)
    return w.digest()


class _Opaque(Exception):
    def __init__(self, where: str, obj: Any):
        t = type(obj)
        super().__init__(f"{where} is a {t.__module__}.{t.__qualname__}, which the cache key "
                         "cannot read")


class _Walker:
    def __init__(self, torch):
        self.torch = torch
        self.out = bytearray()
        self.memo: dict[int, int] = {}
        self.order: list[int] = []
        self.alive: list[Any] = []  # keeps walked temporaries alive so ids stay unique
        self.count = 0

    # --- output ------------------------------------------------------------------
    def emit(self, tag: bytes, payload: bytes = b"") -> None:
        self.out += tag + b"\0" + struct.pack("<Q", len(payload)) + payload

    def digest(self) -> bytes:
        return hashlib.sha256(bytes(self.out)).digest()

    def _seen(self, obj) -> bool:
        """Emit a back-reference if ``obj`` was walked already (aliasing counts)."""
        i = self.memo.get(id(obj))
        if i is not None:
            self.emit(b"ref", str(i).encode())
            return True
        self.memo[id(obj)] = len(self.order)
        self.order.append(id(obj))
        self.alive.append(obj)
        return False

    # --- dispatch ----------------------------------------------------------------
    def value(self, obj, strict: bool, where: str) -> None:
        self.count += 1
        if self.count > _LIMIT:
            raise Unkeyable(f"the model's state has more than {_LIMIT} values")
        if strict:
            try:
                self._value(obj, True, where)
            except _Opaque as e:
                raise Unkeyable(str(e)) from None
            except RecursionError:
                raise Unkeyable(f"{where} nests too deeply to key") from None
            return
        mark, n = len(self.out), len(self.order)
        try:
            self._value(obj, False, where)
        except (_Opaque, RecursionError, Unkeyable):
            del self.out[mark:]
            for i in self.order[n:]:
                self.memo.pop(i, None)
            del self.order[n:]
            t = type(obj)
            self.emit(b"opaque", f"{t.__module__}.{t.__qualname__}".encode())

    def _value(self, obj, strict: bool, where: str) -> None:  # noqa: C901 - one case per kind
        torch = self.torch
        t = type(obj)
        if obj is None or obj is Ellipsis or obj is NotImplemented:
            self.emit(b"const", repr(obj).encode())
        elif t is bool:
            self.emit(b"bool", b"1" if obj else b"0")
        elif t is int:
            self.emit(b"int", str(obj).encode())
        elif t is float:
            self.emit(b"float", obj.hex().encode())
        elif t is complex:
            self.emit(b"complex", f"{obj.real.hex()},{obj.imag.hex()}".encode())
        elif t is str:
            self.emit(b"str", obj.encode("utf-8", "surrogatepass"))
        elif t in (bytes, bytearray):
            self.emit(b"bytes", bytes(obj))
        elif torch is not None and isinstance(obj, (torch.dtype, torch.device, torch.layout,
                                                    torch.memory_format)):
            self.emit(b"torch." + t.__name__.encode(), str(obj).encode())
        elif torch is not None and isinstance(obj, torch.nn.Module):
            self._module(obj, strict, where)
        elif torch is not None and isinstance(obj, torch.Tensor):
            self._tensor(obj, where)
        elif isinstance(obj, enum.Enum):
            self._cls(t)
            self.emit(b"enum", obj.name.encode())
        elif t in (tuple, list) or (isinstance(obj, tuple) and hasattr(obj, "_fields")) \
                or (torch is not None and t is torch.Size):
            if self._seen(obj):
                return
            self._cls(t)
            self.emit(b"seq", str(len(obj)).encode())
            for i, v in enumerate(obj):
                self.value(v, strict, f"{where}[{i}]")
        elif isinstance(obj, dict) and self._plain_dict_type(t):
            if self._seen(obj):
                return
            self._cls(t)
            if getattr(obj, "default_factory", None) is not None:
                self.value(obj.default_factory, strict, f"{where}.default_factory")
            self.emit(b"dict", str(len(obj)).encode())
            for k, v in list(obj.items()):
                self.value(k, strict, where)
                self.value(v, strict, f"{where}[{k!r}]")
        elif t in (set, frozenset):
            parts = []
            for v in obj:
                sub = _Walker(torch)
                sub.value(v, strict, where)
                parts.append(bytes(sub.out))
            self.emit(b"set" if t is set else b"frozenset", b"".join(sorted(parts)))
        elif isinstance(obj, type):
            self._cls(obj)
        elif isinstance(obj, types.FunctionType):
            self._function(obj, strict, where)
        elif isinstance(obj, types.MethodType):
            if self._seen(obj):
                return
            self.emit(b"method")
            self.value(obj.__func__, strict, f"{where}.__func__")
            self.value(obj.__self__, strict, f"{where}.__self__")
        elif isinstance(obj, (types.BuiltinFunctionType, types.WrapperDescriptorType,
                              types.MethodDescriptorType, types.MethodWrapperType)) or \
                (torch is not None and isinstance(obj, (torch._ops.OpOverload,
                                                        torch._ops.OpOverloadPacket))):
            owner = getattr(obj, "__self__", None)
            name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", str(obj))
            self.emit(b"builtin", f"{getattr(obj, '__module__', None)}.{name}".encode())
            if owner is not None and not isinstance(owner, types.ModuleType):
                self.value(owner, strict, f"{where}.__self__")
        elif isinstance(obj, functools.partial):
            self.emit(b"partial")
            self.value(obj.func, strict, f"{where}.func")
            self.value(obj.args, strict, f"{where}.args")
            self.value(obj.keywords, strict, f"{where}.keywords")
        elif isinstance(obj, (staticmethod, classmethod)):
            self.emit(b"wrapped." + t.__name__.encode())
            self.value(obj.__func__, strict, where)
        elif isinstance(obj, property):
            self.emit(b"property")
            for part in (obj.fget, obj.fset, obj.fdel):
                self.value(part, strict, where)
        elif isinstance(obj, types.ModuleType):
            self.emit(b"pymodule", obj.__name__.encode())
        elif type(obj).__module__ == "numpy" and hasattr(obj, "dtype") and hasattr(obj, "shape"):
            self._array(obj, where)
        else:
            self._object(obj, strict, where)

    @staticmethod
    def _plain_dict_type(t) -> bool:
        import collections

        return t in (dict, collections.OrderedDict, collections.defaultdict)

    # --- torch -------------------------------------------------------------------
    def _module(self, m, strict: bool, where: str) -> None:
        if self._seen(m):
            return
        self._cls(type(m))
        state = vars(m)
        self.emit(b"module", str(len(state)).encode())
        for k in sorted(state):
            if k in _BOOKKEEPING or k in _HOOK_FLAGS:
                continue
            self.emit(b"attr", k.encode())
            if k in _HOOKS:
                self.hooks(state[k], [state.get(f) for f in _HOOKS[k]], f"{where}.{k}")
            else:
                self.value(state[k], strict, f"{where}.{k.lstrip('_') if k in _CHILDREN else k}")

    def hooks(self, hooks, flags: list, where: str) -> None:
        """Forward hooks in order with their flags; the handle ids that key them
        are a process-wide counter, not behaviour."""
        hooks = hooks or {}
        self.emit(b"hooks", str(len(hooks)).encode())
        for i, (hid, hook) in enumerate(list(hooks.items())):
            self.value(hook, True, f"{where}[{i}]")
            self.emit(b"flags", bytes(bool(f is not None and hid in f) for f in flags))

    def _tensor(self, t, where: str) -> None:
        torch = self.torch
        if self._seen(t):
            return
        plain = type(t) in (torch.Tensor, torch.nn.Parameter) or \
            type(t).__name__ == "Buffer" and type(t).__module__.startswith("torch")
        if not plain or t.layout != torch.strided or t.is_quantized or t.is_meta \
                or t.device.type not in ("cpu", "cuda", "xpu", "mps"):
            raise _Opaque(where, t)
        d = t.detach().resolve_conj().resolve_neg().cpu().contiguous()
        h = hashlib.sha256()
        if d.numel():
            h.update(d.reshape(-1).view(torch.uint8).numpy())
        self.emit(b"tensor", f"{type(t).__name__}:{d.dtype}:{tuple(d.shape)}:".encode() + h.digest())

    def _array(self, a, where: str) -> None:
        import numpy as np

        if a.dtype.hasobject:
            raise _Opaque(where, a)
        a = np.ascontiguousarray(a)
        self.emit(b"ndarray", f"{a.dtype.str}:{a.shape}:".encode() +
                  hashlib.sha256(a.view(np.uint8).reshape(-1) if a.size else b"").digest())

    # --- code --------------------------------------------------------------------
    def _cls(self, cls) -> None:
        if self._seen(cls):
            return
        self.emit(b"class", f"{cls.__module__}.{cls.__qualname__}".encode())
        for c in cls.__mro__:
            if c is object:
                continue
            stamp = _library_stamp(c.__module__)
            self.emit(b"mro", f"{c.__module__}.{c.__qualname__}|{stamp}".encode())
            if c.__module__.split(".")[0] in ("torch", "builtins"):
                continue  # torch's own: its version says what runs
            for k, v in sorted(vars(c).items()):
                if k not in _CLASS_TRIVIA:
                    self.emit(b"cattr", k.encode())
                    self.value(v, False, f"{c.__qualname__}.{k}")

    def _function(self, f, strict: bool, where: str) -> None:
        if self._seen(f):
            return
        module = getattr(f, "__module__", None) or ""
        stamp = _library_stamp(module)
        self.emit(b"function", f"{module}.{f.__qualname__}|{stamp}".encode())
        if stamp is None:  # the user's own code: its bytecode, and the globals it names
            self.emit(b"code", _code_digest(f.__code__))
            g = f.__globals__
            for name in sorted(_code_names(f.__code__)):
                if name in g and g[name] is not f:
                    self.emit(b"global", name.encode())
                    self.value(g[name], False, f"{module}.{name}")
        self.value(f.__defaults__, strict, f"{where}.__defaults__")
        self.value(f.__kwdefaults__, strict, f"{where}.__kwdefaults__")
        for i, cell in enumerate(f.__closure__ or ()):
            try:
                v = cell.cell_contents
            except ValueError:  # an empty cell
                self.emit(b"cell")
                continue
            self.value(v, strict, f"{where}.<closure {f.__code__.co_freevars[i]}>")
        wrapped = getattr(f, "__wrapped__", None)
        if wrapped is not None:
            self.value(wrapped, strict, f"{where}.__wrapped__")

    def _object(self, obj, strict: bool, where: str) -> None:
        """A plain Python object: its class and its pickle state, when that is
        provably all of it (``object``'s default reduce over ``__dict__``/slots)."""
        t = type(obj)
        if any(getattr(t, n, None) is not getattr(object, n) for n in
               ("__reduce_ex__", "__reduce__", "__getstate__")) or \
                hasattr(t, "__getnewargs_ex__") or hasattr(t, "__getnewargs__"):
            raise _Opaque(where, obj)
        try:
            r = obj.__reduce_ex__(4)
        except Exception:  # noqa: BLE001 - C state pickle cannot reach: not plain
            raise _Opaque(where, obj) from None
        if not (isinstance(r, tuple) and len(r) >= 2 and r[0] is copyreg.__newobj__
                and r[1] == (t,) and all(x is None for x in r[3:])):
            raise _Opaque(where, obj)
        if self._seen(obj):
            return
        self._cls(t)
        self.emit(b"object")
        self.value(r[2] if len(r) > 2 else None, strict, where)


def _code_digest(code: types.CodeType) -> bytes:
    h = hashlib.sha256()
    for part in (code.co_code, code.co_names, code.co_varnames, code.co_freevars,
                 code.co_cellvars, (code.co_argcount, code.co_posonlyargcount,
                                    code.co_kwonlyargcount, code.co_flags)):
        h.update(repr(part).encode() if not isinstance(part, bytes) else part)
    for c in code.co_consts:
        h.update(_code_digest(c) if isinstance(c, types.CodeType) else
                 f"{type(c).__name__}:{c.hex() if type(c) is float else repr(c)}".encode())
    return h.digest()


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _code_names(c)
    return names


@functools.lru_cache(maxsize=None)
def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return tuple(sorted(os.path.realpath(d) + os.sep for d in dirs if d))


@functools.lru_cache(maxsize=None)
def _library_stamp(module: str) -> str | None:
    """``version|size|mtime`` of an installed library module's source file (a
    re-install changes it), or None for the user's own code."""
    mod = sys.modules.get(module)
    path = getattr(mod, "__file__", None)
    if module == "builtins" or (mod is not None and path is None and module in sys.builtin_module_names):
        return f"python {sys.version.split()[0]}"
    if not path:
        return None
    real = os.path.realpath(path)
    if not real.startswith(_library_dirs()):
        return None
    top = sys.modules.get(module.split(".")[0])
    version = getattr(top, "__version__", None)
    try:
        st = os.stat(real)
    except OSError:
        return None
    return f"{version if isinstance(version, str) else sys.version.split()[0]}|{st.st_size}|{st.st_mtime_ns}"
