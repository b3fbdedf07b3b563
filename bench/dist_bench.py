#!/usr/bin/python3
"""Data-parallel training throughput of examples/dist_char_lm, alternated configuration by
configuration, round after round, so that load on the machine hits all of them alike.

Configurations: 1 rank x 1 thread, 1 rank x 2 threads, 2 ranks x 1 thread with the all-reduce
overlapping backward, and 2 ranks x 1 thread with the all-reduce after backward. Each run
reports (from inside the program, setup excluded) its training throughput in sequences per
second (one sequence = one stream's k1-character chunk) and the share of the training time spent
in GradientReducer::synchronize (waiting for the all-reduce, including waiting for the slower
rank). The table gives medians over --rounds and the median of the per-round ratios to 1 x 1.

    /usr/bin/python3 bench/dist_bench.py [--build build] [--rounds 5] [--text FILE] [--epochs 10]
"""

import argparse
import os
import re
import statistics
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LINE = re.compile(r"throughput: ([0-9.]+) sequences/s .* waiting on the all-reduce: ([0-9.]+)% of the training time "
                  r"\(([0-9.]+) KiB per step in ([0-9]+) bucket.*; ([0-9.]+) CPU s per 1000 sequences")

CONFIGS = [
    ("1 rank x 1 thread", 1, 1, []),
    ("1 rank x 2 threads", 1, 2, []),
    ("2 ranks x 1 thread, overlap on", 2, 1, []),
    ("2 ranks x 1 thread, overlap off", 2, 1, ["--no-overlap"]),
]


def run(binary, ranks, threads, extra, args):
    command = [binary, "--epochs", str(args.epochs), "--sample", "0", "--threads", str(threads)] + extra
    if args.text:
        command += ["--text", args.text]
    if ranks > 1:
        command = ["mpirun", "-np", str(ranks), "--oversubscribe"] + command
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    match = LINE.search(done.stdout)
    if not match:
        raise SystemExit(f"no throughput line in the output of {' '.join(command)}:\n{done.stdout}")
    return float(match.group(1)), float(match.group(2)), float(match.group(3)), int(match.group(4)), float(match.group(5))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default=os.path.join(ROOT, "build"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--text", default="", help="a text file (default: the embedded opening of Alice)")
    args = parser.parse_args()
    binary = os.path.join(args.build, "bin", "dist_char_lm")
    results = {name: [] for name, *_ in CONFIGS}
    message = None
    for round_ in range(args.rounds):
        for name, ranks, threads, extra in CONFIGS:
            throughput, wait, kib, buckets, cpu = run(binary, ranks, threads, extra, args)
            results[name].append((throughput, wait, cpu))
            message = (kib, buckets)
            print(f"round {round_ + 1}/{args.rounds}: {name}: {throughput:.1f} sequences/s, {wait:.1f}% waiting, "
                  f"{cpu:.2f} CPU s / 1000 sequences", flush=True)
    base = [t for t, _, _ in results[CONFIGS[0][0]]]
    print(f"\nchar LM (Embedding(32) -> LSTM(128) -> Linear, TBPTT k1 = 16, k2 = 32, 16 streams, float32), "
          f"{message[0]:.0f} KiB of gradients per step in {message[1]} bucket(s); medians of {args.rounds} rounds\n")
    print("| configuration | sequences/s | vs 1 x 1 (median of paired ratios) | time waiting in synchronize | "
          "CPU s per 1000 sequences (all ranks) |")
    print("|---|---|---|---|---|")
    for name, *_ in CONFIGS:
        throughputs = [t for t, _, _ in results[name]]
        ratios = [t / b for t, b in zip(throughputs, base)]
        waits = [w for _, w, _ in results[name]]
        cpus = [c for _, _, c in results[name]]
        print(f"| {name} | {statistics.median(throughputs):.0f} | {statistics.median(ratios):.2f}x | "
              f"{statistics.median(waits):.1f}% | {statistics.median(cpus):.2f} |")


if __name__ == "__main__":
    main()
