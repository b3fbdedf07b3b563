#!/usr/bin/python3
"""Write PyTorch reference fixtures for checking `rewind grad` against PyTorch.

What it writes
--------------
For every case below it creates ``tests/fixtures/<case>/`` holding three
safetensors files, and it writes ``tests/fixtures/cases.json`` listing every
case as
``{"name", "cell", "input_size", "hidden_size", "layers", "bidirectional",
"dtype", "batch_first", "bias", "proj_size"}`` (cell is rnn_tanh | rnn_relu |
lstm | gru, dtype is F32 | F64, batch_first is always false; bias is PyTorch's
``bias`` option, proj_size the LSTM's, 0 for none).

Below, P is the width of h: proj_size when it is set (LSTM with projections),
else H. Such an LSTM also has ``weight_hr_l0`` [P, H] etc. in its state, and a
``bias=False`` module has no ``bias_*`` entries.

``state.safetensors``
    The module's ``state_dict()`` under PyTorch's names (``weight_ih_l0``,
    ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, and the ``_reverse``
    variants for bidirectional modules), in the case's dtype.

``inputs.safetensors``
    ``x`` [T, B, I] (time-major); optionally ``h0`` [L*D, B, P] and, for LSTM,
    ``c0`` [L*D, B, H]; optionally ``lengths`` (I64, [B], each in 1..T, not
    necessarily sorted); ``grad_output`` [T, B, D*P]; optionally
    ``grad_h_n`` [L*D, B, P] and, for LSTM, ``grad_c_n`` [L*D, B, H].
    Everything except ``lengths`` is in the case's dtype.

``expected.safetensors``
    ``output`` [T, B, D*P], ``h_n`` [L*D, B, P], ``c_n`` [L*D, B, H] (LSTM only), and the
    gradients of the loss
        sum(output * grad_output) + sum(h_n * grad_h_n) + sum(c_n * grad_c_n)
    (terms whose seed is absent are omitted) with respect to every input and
    parameter: ``grad.x``, ``grad.h0`` / ``grad.c0`` (only when h0 / c0 were
    given) and ``grad.<parameter name>`` for every entry of the state.

    With ``lengths`` the input is packed with
    ``pack_padded_sequence(..., enforce_sorted=False)`` and ``output`` is
    ``pad_packed_sequence(..., total_length=T)``: zeros past each sequence's
    end. ``h_n`` / ``c_n`` are then each sequence's state at its own last step
    (for the reverse direction: after running back to step 0), which is what
    PyTorch returns.

It also writes ``tests/fixtures/losses.safetensors``: the loss reductions
(mean, sum, none) and probability targets of ``torch.nn.functional``'s
cross_entropy and mse_loss, and the sequence losses, with every gradient
(see ``loss_fixture`` below; read by ``tests/test_losses.cpp``), and
``tests/fixtures/ops.safetensors``: the element-wise and normalisation ops (abs, rsqrt,
maximum, minimum, where, softplus, log_sigmoid, var, layer_norm) with their gradients
(see ``ops_fixture``; read by ``tests/test_ops_torch.cpp``).

Everything is computed in the case's dtype (the module is converted with
``.double()`` for F64 cases) on the CPU with one thread, from fixed seeds, so
running the script twice gives byte-identical files.

File format
-----------
safetensors, written here without the safetensors package: an 8-byte
little-endian u64 header length N, N bytes of JSON
``{"name": {"dtype": ..., "shape": [...], "data_offsets": [begin, end]}}``
(offsets relative to the start of the data section at 8 + N) padded with
spaces to a multiple of 8, then the raw little-endian row-major data of every
tensor, contiguous, in sorted name order. At the end the script re-reads every
file it wrote with an independent reader and compares it with what it meant to
write.

How to run
----------
    apt-get install -y python3-torch      # Debian's PyTorch
    /usr/bin/python3 tests/make_torch_fixtures.py [--out DIR]

Only regenerating the fixtures needs PyTorch. The generated files are committed
to the repository; the tests (and CI) only read them and never need torch or
Python.
"""

import argparse
import json
import os
import struct
import sys

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "fixtures")

DTYPES = {
    "F32": (torch.float32, "<f4"),
    "F64": (torch.float64, "<f8"),
    "I64": (torch.int64, "<i8"),
}
TORCH_TO_NAME = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}
CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")


# ----------------------------------------------------------------------------
# safetensors writer / reader


def encode_safetensors(tensors):
    """Serialises {name: torch.Tensor} (F32/F64/I64) to safetensors bytes."""
    header = {}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        dtype_name = TORCH_TO_NAME[t.dtype]
        np_dtype = DTYPES[dtype_name][1]
        data = np.ascontiguousarray(t.numpy()).astype(np_dtype, copy=False).tobytes(order="C")
        header[name] = {
            "dtype": dtype_name,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def write_safetensors(path, tensors):
    blob = encode_safetensors(tensors)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, path)


def read_safetensors(path):
    """Independent reader: returns {name: (dtype_name, shape, numpy array)}.

    Checks the layout strictly: header padding, known dtypes, sizes matching
    shapes, tensors contiguous and in sorted name order, no trailing bytes.
    """
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: too short")
    (n,) = struct.unpack("<Q", blob[:8])
    if n % 8 != 0 or 8 + n > len(blob):
        raise ValueError(f"{path}: bad header length {n}")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = blob[8 + n:]
    out = {}
    expected_begin = 0
    for name in sorted(header):
        if name == "__metadata__":
            continue
        entry = header[name]
        dtype_name = entry["dtype"]
        if dtype_name not in DTYPES:
            raise ValueError(f"{path}: {name}: unknown dtype {dtype_name}")
        np_dtype = np.dtype(DTYPES[dtype_name][1])
        shape = [int(s) for s in entry["shape"]]
        begin, end = (int(v) for v in entry["data_offsets"])
        count = int(np.prod(shape)) if shape else 1
        if begin != expected_begin or end - begin != count * np_dtype.itemsize:
            raise ValueError(f"{path}: {name}: bad data_offsets {begin},{end}")
        arr = np.frombuffer(data[begin:end], dtype=np_dtype).reshape(shape)
        out[name] = (dtype_name, shape, arr)
        expected_begin = end
    if expected_begin != len(data):
        raise ValueError(f"{path}: {len(data) - expected_begin} trailing bytes")
    return out


# ----------------------------------------------------------------------------
# cases


def case(name, cell, T, B, I, H, L, bidirectional, dtype, seed,
         h0=False, lengths=None, grad_h_n=False, grad_c_n=False, bias=True,
         proj_size=0):
    assert proj_size == 0 or cell == "lstm"
    return dict(name=name, cell=cell, T=T, B=B, I=I, H=H, L=L,
                bidirectional=bidirectional, dtype=dtype, seed=seed, h0=h0,
                lengths=lengths, grad_h_n=grad_h_n, grad_c_n=grad_c_n,
                bias=bias, proj_size=proj_size)


def all_cases():
    cases = []
    seed = 1000
    for k, cell in enumerate(CELLS):
        is_lstm = cell == "lstm"
        # 1 layer, unidirectional, no initial state; plain output seed only.
        # (lstm also seeds h_n but not c_n, to exercise a missing term.)
        cases.append(case(f"{cell}_l1_f64", cell, T=4 + (k % 2), B=2 + (k % 2),
                          I=3, H=5 - (k % 2), L=1, bidirectional=False,
                          dtype="F64", seed=seed + 1, grad_h_n=is_lstm))
        # 2 layers, bidirectional, unsorted lengths, seeds on h_n (and c_n);
        # lstm and gru also start from an h0 (and c0).
        cases.append(case(f"{cell}_l2_bi_len_f64", cell, T=5, B=4, I=2, H=3, L=2,
                          bidirectional=True, dtype="F64", seed=seed + 2,
                          h0=cell in ("lstm", "gru"), lengths=[3, 5, 1, 4],
                          grad_h_n=True, grad_c_n=is_lstm))
        # 3 layers, unidirectional, with h0 (and c0); rnn_tanh and lstm also
        # seed h_n (and c_n).
        cases.append(case(f"{cell}_l3_h0_f64", cell, T=4, B=2, I=5, H=3, L=3,
                          bidirectional=False, dtype="F64", seed=seed + 3,
                          h0=True, grad_h_n=cell in ("rnn_tanh", "lstm"),
                          grad_c_n=is_lstm))
        # The bidirectional-with-lengths configuration in F32.
        cases.append(case(f"{cell}_l2_bi_len_f32", cell, T=5, B=4, I=2, H=3, L=2,
                          bidirectional=True, dtype="F32", seed=seed + 4,
                          h0=cell in ("lstm", "gru"), lengths=[2, 4, 5, 1],
                          grad_h_n=True, grad_c_n=is_lstm))
        seed += 100
    # Packed input whose lengths are all equal to T (must match the unpacked
    # computation), with an odd batch and h0.
    cases.append(case("gru_l2_bi_fulllen_f64", "gru", T=4, B=3, I=5, H=2, L=2,
                      bidirectional=True, dtype="F64", seed=2001, h0=True,
                      lengths=[4, 4, 4], grad_h_n=True))
    cases.append(case("lstm_l1_bi_fulllen_f64", "lstm", T=3, B=2, I=2, H=3, L=1,
                      bidirectional=True, dtype="F64", seed=2002,
                      lengths=[3, 3], grad_h_n=True, grad_c_n=True))
    # A batch of one with a single step.
    cases.append(case("rnn_tanh_l2_bi_len_b1_f64", "rnn_tanh", T=2, B=1, I=3, H=2,
                      L=2, bidirectional=True, dtype="F64", seed=2003,
                      lengths=[1], grad_h_n=True))
    # bias=False for every cell: several layers, both directions, lengths.
    for k, cell in enumerate(CELLS):
        is_lstm = cell == "lstm"
        cases.append(case(f"{cell}_nobias_l2_bi_len_f64", cell, T=5, B=3, I=3,
                          H=4 - (k % 2), L=2, bidirectional=True, dtype="F64",
                          seed=3001 + k, h0=cell != "rnn_relu",
                          lengths=[4, 5, 2], grad_h_n=True, grad_c_n=is_lstm,
                          bias=False))
    cases.append(case("gru_nobias_l1_f32", "gru", T=4, B=2, I=3, H=5, L=1,
                      bidirectional=False, dtype="F32", seed=3011, bias=False))
    # LSTM with projections (proj_size < H): h, the output and the next
    # layer's input have proj_size units, c keeps H.
    cases.append(case("lstm_proj_l1_f64", "lstm", T=4, B=2, I=3, H=5, L=1,
                      bidirectional=False, dtype="F64", seed=4001, h0=True,
                      grad_h_n=True, proj_size=2))
    cases.append(case("lstm_proj_l2_bi_len_f64", "lstm", T=5, B=4, I=2, H=4,
                      L=2, bidirectional=True, dtype="F64", seed=4002, h0=True,
                      lengths=[3, 5, 1, 4], grad_h_n=True, grad_c_n=True,
                      proj_size=3))
    cases.append(case("lstm_proj_nobias_l3_f64", "lstm", T=4, B=2, I=5, H=4,
                      L=3, bidirectional=False, dtype="F64", seed=4003,
                      grad_c_n=True, bias=False, proj_size=1))
    cases.append(case("lstm_proj_l2_bi_len_f32", "lstm", T=5, B=3, I=2, H=4,
                      L=2, bidirectional=True, dtype="F32", seed=4004, h0=True,
                      lengths=[2, 5, 4], grad_h_n=True, grad_c_n=True,
                      proj_size=2))
    return cases


def make_module(c):
    kwargs = dict(input_size=c["I"], hidden_size=c["H"], num_layers=c["L"],
                  bidirectional=c["bidirectional"], batch_first=False, bias=c["bias"])
    if c["cell"] == "lstm":
        return torch.nn.LSTM(proj_size=c["proj_size"], **kwargs)
    if c["cell"] == "gru":
        return torch.nn.GRU(**kwargs)
    return torch.nn.RNN(nonlinearity=c["cell"][4:], **kwargs)


def run_case(c):
    """Returns (state, inputs, expected) dictionaries of tensors."""
    dtype = DTYPES[c["dtype"]][0]
    torch.manual_seed(c["seed"])
    module = make_module(c)  # default init, U(-1/sqrt(H), 1/sqrt(H))
    module = module.double() if dtype == torch.float64 else module.float()
    T, B, I, H, L = c["T"], c["B"], c["I"], c["H"], c["L"]
    D = 2 if c["bidirectional"] else 1
    is_lstm = c["cell"] == "lstm"
    P = c["proj_size"] or H  # the width of h

    g = torch.Generator().manual_seed(c["seed"] + 7)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    inputs = {"x": randn(T, B, I)}
    if c["h0"]:
        inputs["h0"] = randn(L * D, B, P, scale=0.5)
        if is_lstm:
            inputs["c0"] = randn(L * D, B, H, scale=0.5)
    if c["lengths"] is not None:
        lengths = torch.tensor(c["lengths"], dtype=torch.int64)
        assert lengths.shape == (B,) and int(lengths.min()) >= 1 and int(lengths.max()) <= T
        inputs["lengths"] = lengths
    inputs["grad_output"] = randn(T, B, D * P)
    if c["grad_h_n"]:
        inputs["grad_h_n"] = randn(L * D, B, P)
    if c["grad_c_n"]:
        assert is_lstm
        inputs["grad_c_n"] = randn(L * D, B, H)

    # Leaves for differentiation.
    x = inputs["x"].clone().requires_grad_(True)
    leaves = {"x": x}
    h0 = c0 = None
    if "h0" in inputs:
        h0 = inputs["h0"].clone().requires_grad_(True)
        leaves["h0"] = h0
    if "c0" in inputs:
        c0 = inputs["c0"].clone().requires_grad_(True)
        leaves["c0"] = c0
    params = dict(module.named_parameters())
    state_names = list(module.state_dict().keys())
    assert sorted(params) == sorted(state_names), (params.keys(), state_names)
    for name, p in params.items():
        assert p.dtype == dtype
        leaves[name] = p

    if is_lstm:
        hx = None
        if h0 is not None:
            hx = (h0, c0 if c0 is not None else torch.zeros(L * D, B, H, dtype=dtype))
    else:
        hx = h0

    inp = x
    if "lengths" in inputs:
        inp = pack_padded_sequence(x, inputs["lengths"], batch_first=False,
                                   enforce_sorted=False)
    out, hn = module(inp, hx)
    if "lengths" in inputs:
        out, _ = pad_packed_sequence(out, batch_first=False, total_length=T)
    if is_lstm:
        h_n, c_n = hn
    else:
        h_n, c_n = hn, None
    assert out.shape == (T, B, D * P) and h_n.shape == (L * D, B, P)
    if c_n is not None:
        assert c_n.shape == (L * D, B, H)
    assert any(n.startswith("bias_") for n in params) == c["bias"]
    assert any(n.startswith("weight_hr_") for n in params) == (c["proj_size"] > 0)

    loss = (out * inputs["grad_output"]).sum()
    if "grad_h_n" in inputs:
        loss = loss + (h_n * inputs["grad_h_n"]).sum()
    if "grad_c_n" in inputs:
        loss = loss + (c_n * inputs["grad_c_n"]).sum()

    names = list(leaves)
    grads = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)

    expected = {"output": out.detach(), "h_n": h_n.detach()}
    if c_n is not None:
        expected["c_n"] = c_n.detach()
    for n, gr in zip(names, grads):
        if gr is None:
            gr = torch.zeros_like(leaves[n])
        assert gr.dtype == dtype and gr.shape == leaves[n].shape
        expected["grad." + n] = gr.detach()

    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    for tensors in (state, inputs, expected):
        for k, v in tensors.items():
            assert torch.isfinite(v.double()).all(), (c["name"], k)
    return state, inputs, expected


def case_entry(c):
    return {
        "name": c["name"],
        "cell": c["cell"],
        "input_size": c["I"],
        "hidden_size": c["H"],
        "layers": c["L"],
        "bidirectional": c["bidirectional"],
        "dtype": c["dtype"],
        "batch_first": False,
        "bias": c["bias"],
        "proj_size": c["proj_size"],
    }


REDUCTIONS = ("mean", "sum", "none")


def loss_fixture():
    """The losses' reductions against torch.nn.functional, in float64: {name: tensor}.

    For every loss and reduction r it holds ``<loss>.<r>.loss`` and the gradient of
    ``sum(loss * <loss>.<r>.seed)`` (seed 1 for mean and sum, a random [N] or
    [T, B] (, F) for none) for each differentiable input, ``<loss>.<r>.grad.<input>``.
      ce           logits [6, 5], integer targets [6]
      ce_ignore    the same with targets of rows 1 and 4 ignored (ignore_index, -100 in
                   ``ce_ignore.targets``; the C++ test passes a 0/1 mask instead)
      soft         logits [6, 5], probability targets ``soft.probabilities`` [6, 5]
                   (both get gradients)
      mse          prediction [4, 3], target [4, 3] (both get gradients)
      seq_ce       logits [4, 3, 5] time-major, targets [4, 3], ``seq.lengths`` [3]: the
                   positions past a sequence's length are ignored (flattened, ignore_index)
      seq_mse      prediction and target [4, 3, 2] with the same lengths: squared error
                   at the positions within the lengths; mean over them times F
    """
    F = torch.nn.functional
    g = torch.Generator().manual_seed(1234)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    out = {}

    def record(name, reduction, loss, inputs):
        seed = torch.ones(()) if reduction != "none" else randn(*loss.shape)
        seed = seed.to(torch.float64)
        grads = torch.autograd.grad((loss * seed).sum(), [t for t in inputs.values()])
        out[f"{name}.{reduction}.loss"] = loss.detach()
        out[f"{name}.{reduction}.seed"] = seed
        for (key, _), grad in zip(inputs.items(), grads):
            out[f"{name}.{reduction}.grad.{key}"] = grad

    logits, targets = randn(6, 5), torch.tensor([1, 0, 4, 4, 2, 3])
    ignored = targets.clone()
    ignored[[1, 4]] = -100
    probabilities = torch.softmax(randn(6, 5), dim=1)
    prediction, target = randn(4, 3), randn(4, 3)
    lengths = torch.tensor([4, 2, 3])
    steps, batch = 4, 3
    within = torch.arange(steps)[:, None] < lengths[None, :]  # [T, B]
    seq_logits, seq_targets = randn(steps, batch, 5), torch.randint(0, 5, (steps, batch), generator=g)
    seq_prediction, seq_target = randn(steps, batch, 2), randn(steps, batch, 2)
    out.update({"ce.logits": logits, "ce.targets": targets, "ce_ignore.targets": ignored,
                "soft.logits": logits, "soft.probabilities": probabilities,
                "mse.prediction": prediction, "mse.target": target,
                "seq.lengths": lengths, "seq_ce.logits": seq_logits, "seq_ce.targets": seq_targets,
                "seq_mse.prediction": seq_prediction, "seq_mse.target": seq_target})
    for r in REDUCTIONS:
        z = logits.clone().requires_grad_()
        record("ce", r, F.cross_entropy(z, targets, reduction=r), {"logits": z})
        z = logits.clone().requires_grad_()
        record("ce_ignore", r, F.cross_entropy(z, ignored, ignore_index=-100, reduction=r), {"logits": z})
        z, p = logits.clone().requires_grad_(), probabilities.clone().requires_grad_()
        record("soft", r, F.cross_entropy(z, p, reduction=r), {"logits": z, "probabilities": p})
        a, b = prediction.clone().requires_grad_(), target.clone().requires_grad_()
        record("mse", r, F.mse_loss(a, b, reduction=r), {"prediction": a, "target": b})
        z = seq_logits.clone().requires_grad_()
        flat_targets = torch.where(within, seq_targets, torch.full_like(seq_targets, -100)).reshape(-1)
        loss = F.cross_entropy(z.reshape(-1, 5), flat_targets, ignore_index=-100, reduction=r)
        record("seq_ce", r, loss.reshape(steps, batch) if r == "none" else loss, {"logits": z})
        a = seq_prediction.clone().requires_grad_()
        terms = F.mse_loss(a, seq_target, reduction="none") * within[:, :, None].to(torch.float64)
        loss = {"mean": terms.sum() / (within.sum() * 2), "sum": terms.sum(), "none": terms}[r]
        record("seq_mse", r, loss, {"prediction": a})
    return out


def ops_fixture():
    """The element-wise and normalisation ops against PyTorch, in float64: {name: tensor}.

    For every case ``<case>`` it holds its inputs ``<case>.in.<input>``, the output
    ``<case>.value``, a random seed of the output's shape ``<case>.seed`` and the gradient of
    ``sum(output * seed)`` for each differentiable input, ``<case>.grad.<input>``. Conditions
    (torch.where) are stored as I64 0/1. Read by ``tests/test_ops_torch.cpp``, which lists the
    cases and the options each was computed with.
    """
    F = torch.nn.functional
    g = torch.Generator().manual_seed(2211)

    def randn(*shape, scale=1.0):
        return torch.randn(tuple(shape), generator=g, dtype=torch.float64) * scale

    def halves(*shape):  # values on a grid of 0.5, so maximum/minimum see ties
        return torch.randint(-2, 3, shape, generator=g).to(torch.float64) / 2

    out = {}

    def record(name, fn, inputs, constants=None):
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        value = fn(**leaves)
        seed = randn(*value.shape)
        grads = torch.autograd.grad((value * seed).sum(), list(leaves.values()))
        out[f"{name}.value"] = value.detach()
        out[f"{name}.seed"] = seed
        for k, v in inputs.items():
            out[f"{name}.in.{k}"] = v
        for k, v in (constants or {}).items():
            out[f"{name}.in.{k}"] = v
        for k, gr in zip(leaves, grads):
            out[f"{name}.grad.{k}"] = gr

    x = randn(3, 4)
    x[0, 0] = 0.0
    record("abs", lambda x: torch.abs(x), {"x": x})
    record("rsqrt", lambda x: torch.rsqrt(x), {"x": torch.rand(3, 4, generator=g, dtype=torch.float64) + 0.1})
    record("maximum", lambda a, b: torch.maximum(a, b), {"a": halves(3, 4), "b": halves(4)})
    record("minimum", lambda a, b: torch.minimum(a, b), {"a": halves(3, 4), "b": halves(3, 1)})
    condition = torch.rand(3, 1, generator=g) < 0.5
    condition[0, 0], condition[1, 0] = True, False
    record("where", lambda a, b: torch.where(condition, a, b), {"a": randn(3, 4), "b": randn(4)},
           {"condition": condition.to(torch.int64)})
    wide = randn(4, 5, scale=8.0)
    record("softplus", lambda x: F.softplus(x), {"x": wide})
    record("softplus_beta2_threshold5", lambda x: F.softplus(x, beta=2.0, threshold=5.0), {"x": wide})
    record("log_sigmoid", lambda x: F.logsigmoid(x), {"x": randn(4, 5, scale=10.0)})
    v = randn(3, 4, 5) + 3.0
    record("var_axis1_unbiased", lambda x: torch.var(x, dim=1, unbiased=True, keepdim=False), {"x": v})
    record("var_axes02_biased_keepdim", lambda x: torch.var(x, dim=[0, 2], unbiased=False, keepdim=True), {"x": v})
    record("var_all", lambda x: torch.var(x), {"x": v})
    n = randn(2, 3, 4, 5, scale=2.0) + 1.0
    record("layer_norm_affine", lambda x, weight, bias: F.layer_norm(x, [4, 5], weight, bias, eps=1e-5),
           {"x": n, "weight": randn(4, 5), "bias": randn(4, 5)})
    record("layer_norm_plain", lambda x: F.layer_norm(x, [5]), {"x": n})
    record("layer_norm_weight_eps", lambda x, weight: F.layer_norm(x, [5], weight, None, eps=0.1),
           {"x": n, "weight": randn(5)})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: tests/fixtures)")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    cases = all_cases()
    names = [c["name"] for c in cases]
    assert len(set(names)) == len(names)
    os.makedirs(args.out, exist_ok=True)

    written = {}  # path -> {name: tensor}
    for c in cases:
        state, inputs, expected = run_case(c)
        d = os.path.join(args.out, c["name"])
        os.makedirs(d, exist_ok=True)
        for fname, tensors in (("state.safetensors", state),
                               ("inputs.safetensors", inputs),
                               ("expected.safetensors", expected)):
            path = os.path.join(d, fname)
            write_safetensors(path, tensors)
            written[path] = tensors

    losses_path = os.path.join(args.out, "losses.safetensors")
    written[losses_path] = loss_fixture()
    write_safetensors(losses_path, written[losses_path])

    ops_path = os.path.join(args.out, "ops.safetensors")
    written[ops_path] = ops_fixture()
    write_safetensors(ops_path, written[ops_path])

    cases_json = json.dumps([case_entry(c) for c in cases], indent=2) + "\n"
    with open(os.path.join(args.out, "cases.json"), "w", encoding="utf-8") as f:
        f.write(cases_json)

    # Self-check: re-read every file with the independent reader and compare
    # bit for bit with the tensors meant to be written.
    total = 0
    for path, tensors in written.items():
        got = read_safetensors(path)
        if sorted(got) != sorted(tensors):
            raise SystemExit(f"self-check failed: {path}: names {sorted(got)} != {sorted(tensors)}")
        for name, t in tensors.items():
            dtype_name, shape, arr = got[name]
            want = t.detach().cpu().contiguous().numpy()
            if dtype_name != TORCH_TO_NAME[t.dtype] or shape != list(t.shape):
                raise SystemExit(f"self-check failed: {path}: {name}: dtype/shape")
            if arr.tobytes() != want.astype(arr.dtype).tobytes():
                raise SystemExit(f"self-check failed: {path}: {name}: data differs")
        total += os.path.getsize(path)
    with open(os.path.join(args.out, "cases.json"), encoding="utf-8") as f:
        listed = json.load(f)
    if [e["name"] for e in listed] != names:
        raise SystemExit("self-check failed: cases.json")
    for e in listed:
        for fname in ("state.safetensors", "inputs.safetensors", "expected.safetensors"):
            if not os.path.isfile(os.path.join(args.out, e["name"], fname)):
                raise SystemExit(f"self-check failed: missing {e['name']}/{fname}")

    print(f"wrote {len(cases)} cases ({len(written)} files, {total} bytes) to {args.out}; "
          f"self-check passed (torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
