#!/usr/bin/python3
"""Write PyTorch reference fixtures for rewind's optimizers (tests/test_optim.cpp).

For every case below it writes ``tests/fixtures/optim/<case>.safetensors``, all F64:

``param.<name>``        the initial value of each parameter (``w`` [3, 2], ``b`` [4])
``grad.<k>.<name>``     the gradient given before step k (k = 0 .. steps - 1)
``expected.<k>.<name>`` the parameter after step k, computed by torch.optim

and in ``__metadata__``: ``optimizer`` (sgd | adam | adamw | rmsprop | adagrad |
adadelta | adamax | nadam | radam), ``steps`` and every hyperparameter under its
rewind name (torch's, with betas split into ``beta1``, ``beta2`` and booleans as
0/1) as Python's repr of the float, which round-trips exactly. Options a case does
not set are written with torch's default, read off the optimizer's param_groups.

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
# The newer optimizers run longer: RAdam's rectified branch starts once rho_t > 5 (step 6 with
# beta2 = 0.999), NAdam's momentum schedule and Adagrad's lr_decay need several steps to show.
LONG_STEPS = 8

CASES = {
    "sgd_plain": ("sgd", dict(lr=0.1)),
    "sgd_momentum": ("sgd", dict(lr=0.1, momentum=0.9)),
    "sgd_nesterov": ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True)),
    "sgd_weight_decay": ("sgd", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    "adam": ("adam", dict(lr=0.01)),
    "adam_weight_decay": ("adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    "adamw": ("adamw", dict(lr=0.01, weight_decay=0.1)),
    "rmsprop": ("rmsprop", dict()),
    "rmsprop_centered_momentum": ("rmsprop", dict(lr=0.01, alpha=0.9, eps=1e-6, momentum=0.9, centered=True,
                                                  weight_decay=0.05)),
    "rmsprop_momentum": ("rmsprop", dict(lr=0.001, momentum=0.5)),
    "adagrad": ("adagrad", dict()),
    "adagrad_decay": ("adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.5,
                                      eps=1e-8)),
    "adadelta": ("adadelta", dict()),
    "adadelta_weight_decay": ("adadelta", dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.1)),
    "adamax": ("adamax", dict()),
    "adamax_weight_decay": ("adamax", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    "nadam": ("nadam", dict()),
    "nadam_weight_decay": ("nadam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1,
                                         momentum_decay=0.01)),
    "radam": ("radam", dict()),
    "radam_weight_decay": ("radam", dict(lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1)),
}

OPTIMIZERS = {
    "sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad, "adadelta": torch.optim.Adadelta, "adamax": torch.optim.Adamax,
    "nadam": torch.optim.NAdam, "radam": torch.optim.RAdam,
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


# The group entries that are not hyperparameters of the update.
NOT_HYPERPARAMETERS = {"params", "foreach", "maximize", "capturable", "differentiable", "amsgrad", "fused"}


def hyperparameters(group):
    meta = {}
    for key, value in group.items():
        if key in NOT_HYPERPARAMETERS:
            continue
        if key == "betas":
            meta["beta1"], meta["beta2"] = value
        else:
            meta[key] = value
    return {key: repr(float(value)) for key, value in meta.items()}


def run(name, kind, options, seed):
    steps = STEPS if kind in ("sgd", "adam", "adamw") else LONG_STEPS
    generator = torch.Generator().manual_seed(seed)
    shapes = {"w": (3, 2), "b": (4,)}
    params = {n: torch.randn(s, generator=generator, dtype=torch.float64) for n, s in shapes.items()}
    tensors = {f"param.{n}": p.clone() for n, p in params.items()}
    live = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    optimizer = OPTIMIZERS[kind](list(live.values()), foreach=False, **options)
    for k in range(steps):
        for n, p in live.items():
            grad = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            tensors[f"grad.{k}.{n}"] = grad.clone()
            p.grad = grad
        optimizer.step()
        for n, p in live.items():
            tensors[f"expected.{k}.{n}"] = p.detach().clone()
    metadata = {"optimizer": kind, "steps": str(steps), **hyperparameters(optimizer.param_groups[0])}
    write_safetensors(os.path.join(OUT, f"{name}.safetensors"), tensors, metadata)


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)
    # Seeds by position: the first seven cases keep the seeds (and files) they had before the
    # later optimizers joined.
    first = sorted(name for name, (kind, _) in CASES.items() if kind in ("sgd", "adam", "adamw"))
    later = sorted(name for name in CASES if name not in first)
    for name, (kind, options) in CASES.items():
        seed = 1000 + first.index(name) if name in first else 2000 + later.index(name)
        run(name, kind, options, seed)
    print(f"wrote {len(CASES)} optimizer fixtures to {OUT} (torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
