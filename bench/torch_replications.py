#!/usr/bin/python3
"""PyTorch's time per training iteration for the README's paper replications, in the same
settings as rewind's examples (README "Paper replications"), one thread:

  adding  examples/adding_problem --cells lstm: LSTM (forget-gate bias +1, split over both
          biases), linear read-out of h_n, MSE, clip_grad_norm 1, Adam
  indrnn  examples/indrnn_adding: two IndRNN layers (h' = relu(W x + b + u * h), the
          authors' initialisation), read-out of the last layer's h_n, MSE, clip_grad_norm 10,
          Adam, then u clamped to |u| <= 2^(1/T) under no_grad. torch has no IndRNN: the
          recurrence is a Python loop over time, as a user writes it (input projection of
          all steps as one matmul first).
  copy    examples/copy_task --cells lstm: LSTM, linear read-out of every step, mean
          cross-entropy, clip_grad_norm 1, RMSprop (alpha 0.9)

Each iteration is zero_grad, forward, backward, clipping, step (and the clamp), on a batch made
beforehand; the figures are the median over --repeats iterations after --warmup, of wall time
and of the process's CPU time (which a shared, loaded machine disturbs less).

    /usr/bin/python3 bench/torch_replications.py [--task adding|indrnn|copy|all] [--json]
"""

import argparse
import json
import math
import statistics
import sys
import time

import torch


def cpu_name():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def adding_batch(steps, batch, generator):
    x = torch.zeros(steps, batch, 2)
    x[:, :, 0] = torch.rand(steps, batch, generator=generator)
    half = steps // 2
    first = torch.randint(0, half, (batch,), generator=generator)
    second = torch.randint(half, steps, (batch,), generator=generator)
    rows = torch.arange(batch)
    x[first, rows, 1] = 1
    x[second, rows, 1] = 1
    target = (x[:, :, 0] * x[:, :, 1]).sum(0, keepdim=True).t()
    return x, target


def adding_lstm(args, generator):
    lstm = torch.nn.LSTM(2, args.hidden)
    with torch.no_grad():
        for bias in (lstm.bias_ih_l0, lstm.bias_hh_l0):
            bias[args.hidden:2 * args.hidden] += 0.5
    head = torch.nn.Linear(args.hidden, 1)
    params = list(lstm.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=args.lr or 1e-3, foreach=False)
    x, target = adding_batch(args.length or 100, args.batch or 50, generator)

    def step():
        optimizer.zero_grad()
        _, (h_n, _) = lstm(x)
        loss = torch.nn.functional.mse_loss(head(h_n[0]), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    return step


class IndRNNLayer(torch.nn.Module):
    def __init__(self, inputs, hidden, low, high):
        super().__init__()
        self.weight_ih = torch.nn.Parameter(torch.randn(hidden, inputs) * 1e-3)
        self.bias = torch.nn.Parameter(torch.zeros(hidden))
        self.weight_hh = torch.nn.Parameter(torch.empty(hidden).uniform_(low, high))

    def forward(self, x):
        projected = torch.nn.functional.linear(x, self.weight_ih, self.bias)
        h = torch.zeros(x.shape[1], self.weight_hh.shape[0])
        outputs = []
        # unbind, not projected[t]: each indexing's backward would write a zero-filled gradient of
        # the whole [T, B, H] tensor, T times over (22 s per iteration at T = 1000 instead of < 1 s).
        for projected_t in projected.unbind(0):
            h = torch.relu(projected_t + self.weight_hh * h)
            outputs.append(h)
        return torch.stack(outputs), h


def indrnn(args, generator):
    steps = args.length or 1000
    bound, low = 2.0 ** (1.0 / steps), 0.5 ** (1.0 / steps)
    layers = [IndRNNLayer(2, args.hidden, 0.0, bound), IndRNNLayer(args.hidden, args.hidden, low, bound)]
    head = torch.nn.Linear(args.hidden, 1)
    params = [p for layer in layers for p in layer.parameters()] + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=args.lr or 2e-4, foreach=False)
    x, target = adding_batch(steps, args.batch or 32, generator)

    def step():
        optimizer.zero_grad()
        out, _ = layers[0](x)
        _, h = layers[1](out)
        loss = torch.nn.functional.mse_loss(head(h), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        with torch.no_grad():
            for layer in layers:
                layer.weight_hh.clamp_(-bound, bound)
    return step


def copy_lstm(args, generator):
    steps = (args.length or 100) + 20
    batch = args.batch or 20
    lstm = torch.nn.LSTM(10, args.hidden)
    head = torch.nn.Linear(args.hidden, 9)
    params = list(lstm.parameters()) + list(head.parameters())
    optimizer = torch.optim.RMSprop(params, lr=args.lr or 1e-3, alpha=0.9, foreach=False)
    symbols = torch.randint(1, 9, (10, batch), generator=generator)
    tokens = torch.zeros(steps, batch, dtype=torch.long)
    tokens[:10] = symbols
    tokens[steps - 11] = 9
    x = torch.nn.functional.one_hot(tokens, 10).float()
    target = torch.zeros(steps, batch, dtype=torch.long)
    target[steps - 10:] = symbols

    def step():
        optimizer.zero_grad()
        output, _ = lstm(x)
        loss = torch.nn.functional.cross_entropy(head(output).reshape(-1, 9), target.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    return step


TASKS = {"adding": adding_lstm, "indrnn": indrnn, "copy": copy_lstm}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="all", choices=list(TASKS) + ["all"])
    parser.add_argument("--length", type=int, help="T (defaults: adding 100, indrnn 1000, copy 100)")
    parser.add_argument("--batch", type=int, help="batch (defaults: adding 50, indrnn 32, copy 20)")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--flush-denormal", action="store_true",
                        help="torch.set_flush_denormal(True): IndRNN's gradients through u < 1 underflow over T = 1000")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(args.flush_denormal)
    torch.manual_seed(1)
    generator = torch.Generator().manual_seed(2)
    results = []
    for name in (list(TASKS) if args.task == "all" else [args.task]):
        step = TASKS[name](args, generator)
        for _ in range(args.warmup):
            step()
        times, cpu_times = [], []
        for _ in range(args.repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            step()
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        result = {"task": name, "ms_per_iteration": 1e3 * statistics.median(times),
                  "cpu_ms_per_iteration": 1e3 * statistics.median(cpu_times), "repeats": args.repeats,
                  "threads": args.threads, "flush_denormal": args.flush_denormal, "torch": torch.__version__,
                  "cpu": cpu_name()}
        results.append(result)
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{name}: {result['ms_per_iteration']:.1f} ms per iteration, CPU {result['cpu_ms_per_iteration']:.1f} ms "
                  f"(medians of {args.repeats}, "
                  f"{args.threads} thread, torch {torch.__version__}, {result['cpu']})")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
