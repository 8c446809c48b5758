"""Runtimes' own C++ log lines kept off the CLI's stderr (not with ``--debug``).

TensorFlow 2.21 logs through absl before anything initialises absl, so its notices
("oneDNN custom operations are on", once per library it loads, each after absl's "All log
messages before absl::InitializeLog() is called are written to STDERR") reach file
descriptor 2 whatever ``TF_CPP_MIN_LOG_LEVEL`` says, on the CPUs where TF turns oneDNN on;
LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." the same way. At
the CLI, fd 2 becomes a pipe whose reader drops those info and warning lines and passes
every other line on (C++ errors, a crash's last words); Python's own ``sys.stderr`` (the
CLI's one-line errors) writes to the terminal directly. Turning the notices off at their
source would change the runtime (``TF_ENABLE_ONEDNN_OPTS=0`` is another kernel library).
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

#: an absl/glog line at INFO or WARNING ("I0000 00:00:1796387981.554380   14303 port.cc:153] …"),
#: absl's note on its own initialisation, TFLite's "INFO: …"
CHATTER = re.compile(rb"^(?:[IW]\d{4} [\d:.]+ +\d+ [^\]\n]+\] "
                     rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
                     rb"|INFO: )")

_installed: list[bool] = []


def filter_native_stderr() -> None:
    """Route fd 2 through the filter for the rest of the process: once, and only where
    Python's stderr is still the process's own (the CLI as a program; not the CLI called
    in-process under a test runner or an application that captures stderr)."""
    if _installed or sys.stderr is not sys.__stderr__ or sys.stderr is None:
        return
    try:
        sys.stderr.flush()
        terminal = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
    except (OSError, ValueError, AttributeError):
        return
    _installed.append(True)
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    sys.stderr = open(terminal, "w", buffering=1, encoding=encoding, errors="backslashreplace",
                      closefd=False)

    def pump() -> None:
        with open(read, "rb") as pipe:
            for line in pipe:
                if not CHATTER.match(line):
                    try:
                        os.write(terminal, line)
                    except OSError:
                        return

    reader = threading.Thread(target=pump, name="hal-stderr-filter", daemon=True)
    reader.start()

    def restore() -> None:
        # fd 2 back on the terminal closes the pipe's last write end here: the reader
        # passes on what is left and ends (a child that outlives us keeps its own end)
        try:
            sys.stderr.flush()
            os.dup2(terminal, 2)
        except (OSError, ValueError):
            return
        reader.join(timeout=5)

    atexit.register(restore)
