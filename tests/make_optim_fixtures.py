#!/usr/bin/python3
"""Write PyTorch reference fixtures for rewind's optimizers (tests/test_training.cpp).

For every case below it writes ``tests/fixtures/optim/<case>.safetensors``, all F64:

``param.<name>``        the initial value of each parameter (``w`` [3, 2], ``b`` [4])
``grad.<k>.<name>``     the gradient given before step k (k = 0, 1, 2)
``expected.<k>.<name>`` the parameter after step k, computed by torch.optim

and in ``__metadata__``: ``optimizer`` (sgd | adam | adamw), ``steps`` and every
hyperparameter under its rewind name (``lr``, ``momentum``, ``dampening``,
``nesterov`` as 0/1, ``weight_decay``, ``beta1``, ``beta2``, ``eps``) as Python's
repr of the float, which round-trips exactly.

torch runs single-threaded with foreach=False (the per-tensor formulas rewind
follows). The safetensors writer is inline: Debian has no safetensors package.
The fixtures are committed; the tests never need Python or torch.
Run: /usr/bin/python3 tests/make_optim_fixtures.py
"""

import json
import os
import struct
import sys

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "optim")
STEPS = 3

CASES = {
    "sgd_plain": ("sgd", dict(lr=0.1)),
    "sgd_momentum": ("sgd", dict(lr=0.1, momentum=0.9)),
    "sgd_nesterov": ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True)),
    "sgd_weight_decay": ("sgd", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    "adam": ("adam", dict(lr=0.01)),
    "adam_weight_decay": ("adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    "adamw": ("adamw", dict(lr=0.01, weight_decay=0.1)),
}


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    chunks, offset = [], 0
    for name in sorted(tensors):
        data = tensors[name].detach().contiguous().numpy().astype("<f8").tobytes()
        header[name] = {"dtype": "F64", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-len(text)) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))
    os.replace(tmp, path)


def hyperparameters(kind, options):
    meta = {"lr": options["lr"], "weight_decay": options.get("weight_decay", 0.0)}
    if kind == "sgd":
        meta.update(momentum=options.get("momentum", 0.0), dampening=0.0, nesterov=float(options.get("nesterov", False)))
    else:
        beta1, beta2 = options.get("betas", (0.9, 0.999))
        meta.update(beta1=beta1, beta2=beta2, eps=options.get("eps", 1e-8))
        if kind == "adamw" and "weight_decay" not in options:
            meta["weight_decay"] = 1e-2
    return {key: repr(float(value)) for key, value in meta.items()}


def run(name, kind, options, seed):
    generator = torch.Generator().manual_seed(seed)
    shapes = {"w": (3, 2), "b": (4,)}
    params = {n: torch.randn(s, generator=generator, dtype=torch.float64) for n, s in shapes.items()}
    tensors = {f"param.{n}": p.clone() for n, p in params.items()}
    live = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    optimizer = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind](
        list(live.values()), foreach=False, **options)
    for k in range(STEPS):
        for n, p in live.items():
            grad = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            tensors[f"grad.{k}.{n}"] = grad.clone()
            p.grad = grad
        optimizer.step()
        for n, p in live.items():
            tensors[f"expected.{k}.{n}"] = p.detach().clone()
    metadata = {"optimizer": kind, "steps": str(STEPS), **hyperparameters(kind, options)}
    write_safetensors(os.path.join(OUT, f"{name}.safetensors"), tensors, metadata)


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)
    for seed, (name, (kind, options)) in enumerate(sorted(CASES.items())):
        run(name, kind, options, 1000 + seed)
    print(f"wrote {len(CASES)} optimizer fixtures to {OUT} (torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
