#!/usr/bin/python3
"""rewind (fused and generic paths), oneDNN's RNN primitives and PyTorch, side by side.

For every size of the README's table this alternates, round after round, one
`rewind bench --peer onednn --json` process (which itself interleaves fused,
generic, oneDNN and the sgemm reference) and one `torch_rnn_step.py --json`
process, so that load on the machine hits all of them alike. Each process
reports the median of --repeats training steps; the table shows the median of
those over --rounds rounds. Everything runs on --threads threads (default 1).

    /usr/bin/python3 bench/compare.py                       # table on stdout
    /usr/bin/python3 bench/compare.py --markdown bench.md --plot bench.png

PyTorch is Debian's python3-torch under /usr/bin/python3; --no-torch leaves
it out. --plot draws the table with gnuplot (if installed).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

def suite(rewind):
    """The README's sizes, as `rewind bench --suite` defines them: (cell, T, B, I, H)."""
    done = subprocess.run([rewind, "bench", "--suite", "--list"], check=True, capture_output=True, text=True)
    cases = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return [(c["cell"], c["seq_len"], c["batch"], c["input_size"], c["hidden_size"]) for c in cases]


def size_args(case):
    cell, steps, batch, inputs, hidden = case
    return ["--cell", cell, "--seq-len", str(steps), "--batch", str(batch),
            "--input-size", str(inputs), "--hidden-size", str(hidden)]


def run_json(command):
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(case, args):
    rewind_runs, torch_runs = [], []
    for _ in range(args.rounds):
        rewind_runs.append(run_json(
            [args.rewind, "bench", *size_args(case), "--peer", "onednn", "--json",
             "--repeats", str(args.repeats), "--threads", str(args.threads)]))
        if not args.no_torch:
            torch_runs.append(run_json(
                [args.python, os.path.join(HERE, "torch_rnn_step.py"), *size_args(case), "--json",
                 "--repeats", str(args.repeats), "--threads", str(args.threads)]))

    def med(runs, key):
        return statistics.median(run[key] for run in runs) if runs else None

    row = {key: med(rewind_runs, key) for key in
           ("fused_ms", "generic_ms", "onednn_ms", "fused_gflops", "sgemm_gflops")}
    row["torch_ms"] = med(torch_runs, "median_ms")
    row["torch_version"] = torch_runs[0]["torch_version"] if torch_runs else None
    row["case"] = case
    return row


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "-"


def table(rows, args):
    lines = [
        f"One training step (forward, loss = sum of the output, backward to input and weights), "
        f"float32, {args.threads} thread(s), median ms of {args.rounds} rounds x {args.repeats} steps.",
        "",
        "| cell | T | B | I=H | fused | generic | oneDNN | PyTorch | oneDNN/fused | PyTorch/fused "
        "| PyTorch/generic | generic/fused | fused GFLOP/s | % of sgemm peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cell, steps, batch, _, hidden = row["case"]
        fmt_ms = lambda v: f"{v:.2f}" if v is not None else "-"
        lines.append(
            f"| {cell} | {steps} | {batch} | {hidden} | {fmt_ms(row['fused_ms'])} | {fmt_ms(row['generic_ms'])} "
            f"| {fmt_ms(row['onednn_ms'])} | {fmt_ms(row['torch_ms'])} "
            f"| {ratio(row['onednn_ms'], row['fused_ms'])} | {ratio(row['torch_ms'], row['fused_ms'])} "
            f"| {ratio(row['torch_ms'], row['generic_ms'])} | {ratio(row['generic_ms'], row['fused_ms'])} "
            f"| {row['fused_gflops']:.0f} | {100 * row['fused_gflops'] / row['sgemm_gflops']:.0f}% |")
    lines.append("")
    lines.append("Ratios above 1 mean the second-named is faster. "
                 f"PyTorch {rows[0]['torch_version'] or 'not run'}; GEMM on oneDNN's dnnl_sgemm.")
    return "\n".join(lines) + "\n"


def plot(rows, path):
    gnuplot = shutil.which("gnuplot")
    if not gnuplot:
        print("compare.py: gnuplot is not installed (apt-get install gnuplot-nox); no plot", file=sys.stderr)
        return
    with tempfile.NamedTemporaryFile("w", suffix=".dat", delete=False) as data:
        for row in rows:
            cell, steps, batch, _, hidden = row["case"]
            values = [row[k] if row[k] is not None else "NaN" for k in ("fused_ms", "generic_ms", "onednn_ms", "torch_ms")]
            data.write(f'"{cell} T={steps} B={batch} H={hidden}" ' + " ".join(str(v) for v in values) + "\n")
    script = f"""
set terminal pngcairo size 1200,650 noenhanced
set output '{path}'
set bmargin 8
set xtics rotate by -25
set title 'one training step, float32, median ms (log scale, lower is better)'
set style data histograms
set style histogram clustered gap 1
set style fill solid border -1
set logscale y
set ylabel 'ms'
set key top left
plot '{data.name}' using 2:xtic(1) title 'rewind fused', '' using 3 title 'rewind generic', \
     '' using 4 title 'oneDNN', '' using 5 title 'PyTorch'
"""
    subprocess.run([gnuplot], input=script, text=True, check=True)
    os.unlink(data.name)


KEEP = "<!-- Below: written by hand; bench/compare.py --markdown keeps it. -->"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rewind", default=os.path.join(ROOT, "build", "bin", "rewind"))
    ap.add_argument("--python", default="/usr/bin/python3", help="an interpreter with torch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", help="cases whose cell name contains this, e.g. lstm")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--markdown", help="also write the table to this file")
    ap.add_argument("--plot", help="draw a PNG with gnuplot")
    ap.add_argument("--save", help="also write the measurements as JSON")
    ap.add_argument("--load", help="table and plot from measurements saved with --save, measuring nothing")
    args = ap.parse_args()

    if args.load:
        with open(args.load) as saved:
            stored = json.load(saved)
        rows, args.rounds, args.repeats, args.threads = stored["rows"], stored["rounds"], stored["repeats"], stored["threads"]
    else:
        rows = []
        for case in suite(args.rewind):
            if args.only and args.only not in case[0]:
                continue
            rows.append(measure(case, args))
            print(f"measured {case}", file=sys.stderr, flush=True)
    if args.save:
        with open(args.save, "w") as out:
            json.dump({"rows": rows, "rounds": args.rounds, "repeats": args.repeats, "threads": args.threads}, out, indent=1)
    text = table(rows, args)
    sys.stdout.write(text)
    if args.markdown:
        # What follows KEEP in an existing file is written by hand and kept.
        kept = ""
        if os.path.exists(args.markdown):
            with open(args.markdown) as old:
                previous = old.read()
            if KEEP in previous:
                kept = "\n" + previous[previous.index(KEEP):]
        with open(args.markdown, "w") as out:
            out.write(text + kept)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
