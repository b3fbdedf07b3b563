#!/usr/bin/python3
"""Expected scaling of data-parallel training with rewind::dist on a cluster, from an
alpha-beta(-gamma) model of the all-reduce and MEASURED compute per step.

Compute per step: the fused LSTM training step of the README's sizes as bench/compare.py
measured it on this project's machine (docs/bench.json, one thread), and optionally the char
LM's step (--char-lm-ms, from bench/dist_bench.py). Weak scaling: every machine keeps its own
batch of the measured size, so compute per step stays C and only the all-reduce is added.

All-reduce of M bytes over p machines (reduce-scatter + all-gather, Rabenseifner; OpenMPI's
tuned all-reduce uses it or a ring for large messages, same bandwidth term):
    T(M, p) = 2 log2(p) alpha + 2 (p - 1)/p M / bandwidth + (p - 1)/p M gamma
Efficiency without overlap: E = C / (C + T(M, p)).
With overlap (buckets started during backward), what stays exposed is the all-reduce of the
gradients that are complete only at the end of backward. A recurrent weight is used at every
time step, so its gradient is complete only when BPTT has reached t = 0: for a one-layer LSTM
that is all of it, and overlap hides nothing. For an L-layer stack, layer l's weights are
complete after the backward of layers L..l; the model then serialises one bucket per layer on
the network, starting each when its layer is done and the previous all-reduce has ended.

    /usr/bin/python3 bench/dist_alpha_beta.py [--bench docs/bench.json] [--char-lm-ms 18.4 --char-lm-kib 379]
"""

import argparse
import json
import math
import os

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# (name, latency alpha in seconds, effective bandwidth in bytes/s)
NETWORKS = [
    ("10 Gbit/s Ethernet, TCP", 20e-6, 0.9 * 10e9 / 8),
    ("100 Gbit/s InfiniBand/RoCE, RDMA", 2e-6, 0.9 * 100e9 / 8),
]
GAMMA = 0.1e-9  # seconds per byte summed (float32 adds at ~10 GB/s memory bandwidth, one core)
MACHINES = [8, 64, 256]
BACKWARD_SHARE = 2 / 3  # of a training step; backward costs about twice the forward
STACK = 4  # layers of the stacked variant


def allreduce(bytes_, p, alpha, bandwidth):
    return 2 * math.log2(p) * alpha + 2 * (p - 1) / p * bytes_ / bandwidth + (p - 1) / p * bytes_ * GAMMA


def stacked_exposed(layer_bytes, layer_step, layers, p, alpha, bandwidth):
    """Exposed all-reduce time after backward for `layers` equal layers, one bucket each."""
    backward = layer_step * BACKWARD_SHARE
    end = 0.0
    for k in range(1, layers + 1):  # layer L is done first, after one layer's backward
        start = max(k * backward, end)
        end = start + allreduce(layer_bytes, p, alpha, bandwidth)
    return max(0.0, end - layers * backward)


def lstm_bytes(inputs, hidden):
    return 4 * (4 * hidden * (inputs + hidden) + 8 * hidden)  # float32 weights and both biases


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", default=os.path.join(ROOT, "docs", "bench.json"))
    parser.add_argument("--char-lm-ms", type=float, help="measured ms per char LM training step (1 rank x 1 thread)")
    parser.add_argument("--char-lm-kib", type=float, default=379.0, help="char LM gradient KiB per step")
    args = parser.parse_args()
    rows = []
    with open(args.bench) as f:
        for row in json.load(f)["rows"]:
            cell, steps, batch, inputs, hidden = row["case"]
            if cell == "lstm":
                rows.append((f"LSTM T={steps} B={batch} I=H={hidden}", row["fused_ms"] / 1e3, lstm_bytes(inputs, hidden), True))
    if args.char_lm_ms:
        rows.append(("char LM (Embedding 32, LSTM 128, 16 streams x 16 steps)", args.char_lm_ms / 1e3, args.char_lm_kib * 1024, False))

    for net, alpha, bandwidth in NETWORKS:
        print(f"\n**{net}** (alpha = {alpha * 1e6:g} us, {bandwidth / 1e9:.2f} GB/s effective, gamma = {GAMMA * 1e9:g} ns/byte)\n")
        header = " | ".join(f"p={p}: all-reduce ms, E" for p in MACHINES)
        print(f"| model | compute ms/step | gradient MB | {header} | p=256, {STACK}-layer stack: E without / with overlap |")
        print("|---|---|---|" + "---|" * len(MACHINES) + "---|")
        for name, compute, bytes_, stackable in rows:
            cells = []
            for p in MACHINES:
                t = allreduce(bytes_, p, alpha, bandwidth)
                cells.append(f"{t * 1e3:.2f} ms, {compute / (compute + t):.0%}")
            # The stack: STACK layers like the measured one (I = H, so each costs the same).
            serial = STACK * allreduce(bytes_, 256, alpha, bandwidth)
            exposed = stacked_exposed(bytes_, compute, STACK, 256, alpha, bandwidth)
            without = STACK * compute / (STACK * compute + serial)
            with_overlap = STACK * compute / (STACK * compute + exposed)
            stacked = f"{without:.0%} / {with_overlap:.0%}" if stackable else "-"
            print(f"| {name} | {compute * 1e3:.2f} | {bytes_ / 1e6:.2f} | " + " | ".join(cells) + f" | {stacked} |")

    print("\n**Bucket size**: the smallest bucket whose all-reduce is at most 10% latency "
          "(2 log2(p) alpha <= 0.1 x 2 (p-1)/p b / bandwidth):\n")
    print("| network | " + " | ".join(f"p={p}" for p in MACHINES) + " |")
    print("|---|" + "---|" * len(MACHINES))
    for net, alpha, bandwidth in NETWORKS:
        sizes = [10 * math.log2(p) * alpha * bandwidth * p / (p - 1) / 1024 for p in MACHINES]
        print(f"| {net} | " + " | ".join(f"{s:.0f} KiB" for s in sizes) + " |")


if __name__ == "__main__":
    main()
