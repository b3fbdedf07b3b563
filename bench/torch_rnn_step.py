#!/usr/bin/python3
"""Time one training step of a PyTorch recurrent layer on the CPU.

A step is: forward over a [T, B, I] time-major input (x.requires_grad), loss =
output.sum(), and backward to the input and every weight. The layer is
torch.nn.RNN (tanh or relu), LSTM or GRU with biases, no batch_first. By
default PyTorch runs on one thread (torch.set_num_threads(1)); --threads N
changes that. After --warmup untimed steps, --repeats steps are timed one by
one with time.perf_counter; the median, min and max are reported in ms.

Examples (Debian's PyTorch: apt-get install -y python3-torch):
    /usr/bin/python3 bench/torch_rnn_step.py --cell lstm --seq-len 100 \\
        --batch 32 --input-size 256 --hidden-size 256 --json

bench/compare.py runs it over the README's sizes beside rewind and oneDNN.
"""

import argparse
import json
import statistics
import sys
import time

import torch

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")

def make_module(cell, input_size, hidden_size, layers, bidirectional, dtype):
    kwargs = dict(input_size=input_size, hidden_size=hidden_size, num_layers=layers,
                  bidirectional=bidirectional, batch_first=False, bias=True)
    if cell == "lstm":
        m = torch.nn.LSTM(**kwargs)
    elif cell == "gru":
        m = torch.nn.GRU(**kwargs)
    else:
        m = torch.nn.RNN(nonlinearity=cell[4:], **kwargs)
    return m.to(dtype)


def time_step(cell, seq_len, batch, input_size, hidden_size, layers=1,
              bidirectional=False, repeats=10, warmup=2, dtype=torch.float32):
    """Returns the list of per-step times in ms."""
    torch.manual_seed(0)
    module = make_module(cell, input_size, hidden_size, layers, bidirectional, dtype)
    x = torch.randn(seq_len, batch, input_size, dtype=dtype, requires_grad=True)

    def step():
        x.grad = None
        module.zero_grad(set_to_none=True)
        out, _ = module(x)
        loss = out.sum()
        loss.backward()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def run(cell, seq_len, batch, input_size, hidden_size, layers, bidirectional,
        threads, repeats, warmup, dtype_name):
    dtype = torch.float64 if dtype_name == "float64" else torch.float32
    times = time_step(cell, seq_len, batch, input_size, hidden_size, layers,
                      bidirectional, repeats, warmup, dtype)
    return {
        "cell": cell,
        "seq_len": seq_len,
        "batch": batch,
        "input_size": input_size,
        "hidden_size": hidden_size,
        "layers": layers,
        "bidirectional": bidirectional,
        "threads": threads,
        "dtype": dtype_name,
        "median_ms": round(statistics.median(times), 4),
        "min_ms": round(min(times), 4),
        "max_ms": round(max(times), 4),
        "repeats": repeats,
        "torch_version": torch.__version__,
    }


def report(result, as_json):
    if as_json:
        print(json.dumps(result), flush=True)
    else:
        print(f"{result['cell']} T={result['seq_len']} B={result['batch']} "
              f"I={result['input_size']} H={result['hidden_size']} L={result['layers']} "
              f"{'bi' if result['bidirectional'] else 'uni'} {result['dtype']} "
              f"threads={result['threads']}: median {result['median_ms']:.3f} ms "
              f"(min {result['min_ms']:.3f}, max {result['max_ms']:.3f}, "
              f"{result['repeats']} repeats, torch {result['torch_version']})", flush=True)


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def non_negative(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Time one PyTorch RNN/LSTM/GRU training step (forward, sum loss, "
                    "backward to inputs and weights) on the CPU.")
    ap.add_argument("--cell", choices=CELLS)
    ap.add_argument("--seq-len", type=positive, metavar="T")
    ap.add_argument("--batch", type=positive, metavar="B")
    ap.add_argument("--input-size", type=positive, metavar="I")
    ap.add_argument("--hidden-size", type=positive, metavar="H")
    ap.add_argument("--layers", type=positive, default=1, metavar="L")
    ap.add_argument("--bidirectional", action="store_true")
    ap.add_argument("--threads", type=positive, default=1, metavar="N",
                    help="torch.set_num_threads (default 1)")
    ap.add_argument("--repeats", type=positive, default=10, metavar="R")
    ap.add_argument("--warmup", type=non_negative, default=2, metavar="W")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)

    missing = [opt for opt, val in (("--cell", args.cell), ("--seq-len", args.seq_len),
                                    ("--batch", args.batch), ("--input-size", args.input_size),
                                    ("--hidden-size", args.hidden_size)) if val is None]
    if missing:
        ap.error("missing " + ", ".join(missing))
    result = run(args.cell, args.seq_len, args.batch, args.input_size, args.hidden_size,
                 args.layers, args.bidirectional, args.threads, args.repeats, args.warmup,
                 args.dtype)
    report(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
