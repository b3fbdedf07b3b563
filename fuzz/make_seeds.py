#!/usr/bin/env python3
"""Writes the hand-made seeds of fuzz/corpus (standard library only; run from the repository root).

The other seeds are copies of tests/fixtures files and fuzz_make_checkpoint_seed's checkpoint.
"""
import json
import struct


def safetensors(path, tensors, metadata=None):
    """tensors: name -> (dtype, shape, values); laid out in name order like rewind's writer."""
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        dtype, shape, values = tensors[name]
        raw = struct.pack("<%d%s" % (len(values), {"F32": "f", "F64": "d", "I64": "q"}[dtype]), *values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)) + text + data)


def ramp(count, scale=0.1):
    return [scale * ((i * 7) % 11 - 5) for i in range(count)]


# Every tensor `rewind grad` reads, for the fuzzed LSTM (I = 3, H = 5, one layer), T = 4, B = 2.
safetensors("fuzz/corpus/grad_inputs/lstm_all_inputs_f64.safetensors", {
    "x": ("F64", [4, 2, 3], ramp(24)),
    "h0": ("F64", [1, 2, 5], ramp(10)),
    "c0": ("F64", [1, 2, 5], ramp(10, 0.2)),
    "lengths": ("I64", [2], [4, 2]),
    "grad_output": ("F64", [4, 2, 5], ramp(40)),
    "grad_h_n": ("F64", [1, 2, 5], ramp(10)),
    "grad_c_n": ("F64", [1, 2, 5], ramp(10)),
})
# The three dtypes, an empty and a 0-d tensor, and metadata.
safetensors("fuzz/corpus/safetensors/dtypes_and_metadata.safetensors", {
    "a": ("F32", [2, 3], ramp(6)),
    "b": ("F64", [3], ramp(3)),
    "c": ("I64", [2, 1], [7, -3]),
    "empty": ("F32", [0, 4], []),
    "scalar": ("F64", [], [1.5]),
}, {"format": "pt", "note": "seed"})
safetensors("fuzz/corpus/safetensors/empty.safetensors", {})
