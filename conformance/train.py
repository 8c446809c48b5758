"""Regenerate the zoo's weights: ``python -m hal_conformance.train``.

Deterministic: fixed seeds, one thread, deterministic algorithms, a fixed
data order. Each model trains for a few seconds on the digits ``train``
split (never on the calibration or evaluation samples) and its evaluation
accuracy is printed and stored in the safetensors metadata.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import zoo
from .data import shape_input, splits
from .models import MODELS, weights_path

SEED = 0
#: (epochs, learning rate) per model: enough for confident predictions, so that
#: quantized precisions have a real accuracy to keep.
SCHEDULE = {"convnet": (8, 1e-3), "mlp": (60, 2e-3), "digits_cnn": (40, 5e-3),
            "resnet": (15, 5e-3), "mobilenet": (40, 5e-3)}
BATCH = 64


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.logits(x) if hasattr(model, "logits") else model(x)


def train(name: str) -> tuple[dict[str, torch.Tensor], float]:
    spec = MODELS[name]
    s = splits()
    xt = torch.from_numpy(shape_input(s["train"].images, spec.input_shape))
    yt = torch.from_numpy(s["train"].labels)
    xe = torch.from_numpy(shape_input(s["eval"].images, spec.input_shape))
    ye = torch.from_numpy(s["eval"].labels)
    torch.manual_seed(SEED)
    model = zoo.CLASSES[name]()
    epochs, lr = SCHEDULE[name]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * -(-len(yt) // BATCH))
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(yt), generator=gen).split(BATCH):
            opt.zero_grad()
            F.cross_entropy(_logits(model, xt[idx]), yt[idx]).backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = float((_logits(model, xe).argmax(1) == ye).float().mean())
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}, acc


def main(argv: list[str] | None = None) -> None:
    from safetensors.torch import save_file

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=list(MODELS))
    p.add_argument("--out", help="write here instead of the package's weights folder")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    for name in args.models:
        t0 = time.perf_counter()
        state, acc = train(name)
        dest = Path(args.out) / f"{name}.safetensors" if args.out else weights_path(name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(dest),
                  # one key: safetensors may reorder several, and the file must be byte-stable
                  metadata={"hal_zoo": json.dumps({"model": name, "eval_accuracy": round(acc, 4),
                                                   "seed": SEED}, sort_keys=True)})
        n = sum(v.numel() for v in state.values())
        print(f"{name:11s} {n:8d} parameters  eval accuracy {acc:.2%}  "
              f"{time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
