"""Which execution provider ran each node, from ONNX Runtime's own record.

A session with profiling on runs the model once (on zeros of the input shapes) and
writes a trace: one ``Node`` event per node of the graph ONNX Runtime runs (after its
own fusions), with ``args.provider``, the execution provider that ran it. Read once per
executable; nodes on the session's first provider are on the device.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from hal.plugin import OpPlacement, Placement


def placement(data: bytes, providers: list[str], specs) -> Placement:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="hal-ort-profile-") as tmp:
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "profile")
        sess = ort.InferenceSession(data, so, providers=providers)
        feeds = {s.name: np.zeros([1 if d is None else d for d in s.shape], s.dtype) for s in specs}
        sess.run(None, feeds)
        with open(sess.end_profiling(), encoding="utf-8") as f:
            events = json.load(f)
    device = sess.get_providers()[0]
    ops, seen = [], set()
    for e in events:
        name, args = e.get("name", ""), e.get("args") or {}
        if e.get("cat") != "Node" or not name.endswith("_kernel_time") or "provider" not in args:
            continue
        node = name[: -len("_kernel_time")]
        if node not in seen:  # one event per node per run
            seen.add(node)
            ops.append(OpPlacement(node, args.get("op_name", "?"), args["provider"],
                                   args["provider"] == device))
    return Placement(ops, "ONNX Runtime's profile of one run (SessionOptions.enable_profiling): "
                          "the execution provider of each node it ran")
