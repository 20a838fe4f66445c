#!/usr/bin/env python3
"""ONNX Runtime CPU measurements behind the lever table in docs/benchmarks.md:

  dtypes     MatMul 2048^3 and a 3x3 Conv (320 -> 320 channels, 64x64) in fp32, fp16 and
             bf16: GFLOP/s, or the error ONNX Runtime gives for a dtype it cannot run
  attention  one SD 1.5 self-attention at 512x512 (batch 2, 4096 tokens, 320 wide, 8 heads)
             as the fused `Attention` kernel and as MatMul -> Split -> `MultiHeadAttention`
  profile    ONNX Runtime's profiler on a UNet (batch 2): kernel time per operator type

    .venv/bin/python scripts/bench/ort_ops.py dtypes
    .venv/bin/python scripts/bench/ort_ops.py attention
    .venv/bin/python scripts/bench/ort_ops.py profile .cache/bench/sd15-random-onnx-cpu [--size 512]

Uses the onnxruntime Python package (the .venv pins 1.32.0; the Rust binary loads 1.31.1,
whose MLAS kernels these match within the run-to-run spread).
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def session(model, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def best_seconds(fn, reps=5):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def tensor(name, array, dtype):
    if dtype == TensorProto.BFLOAT16:
        # bf16 is the upper half of the fp32 bit pattern (truncation is fine for timing)
        bits = (array.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        return helper.make_tensor(name, dtype, array.shape, bits.tobytes(), raw=True)
    return numpy_helper.from_array(array.astype(helper.tensor_dtype_to_np_dtype(dtype)), name)


def feed(array, dtype):
    if dtype == TensorProto.BFLOAT16:
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
            (array.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16), TensorProto.BFLOAT16
        )
    return array.astype(helper.tensor_dtype_to_np_dtype(dtype))


def dtypes(args):
    rng = np.random.default_rng(0)
    n = 2048
    cases = {
        "MatMul 2048^3": (
            lambda: helper.make_node("MatMul", ["x", "w"], ["y"]),
            rng.standard_normal((n, n), dtype=np.float32),
            rng.standard_normal((n, n), dtype=np.float32),
            2 * n**3,
        ),
        "Conv 3x3 320->320 64x64": (
            lambda: helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
            rng.standard_normal((1, 320, 64, 64), dtype=np.float32),
            rng.standard_normal((320, 320, 3, 3), dtype=np.float32) * 0.05,
            2 * 320 * 320 * 9 * 64 * 64,
        ),
    }
    for label, (node, x, w, flop) in cases.items():
        for name, dtype in (("fp32", TensorProto.FLOAT), ("fp16", TensorProto.FLOAT16), ("bf16", TensorProto.BFLOAT16)):
            graph = helper.make_graph(
                [node()],
                "op",
                [helper.make_tensor_value_info("x", dtype, list(x.shape))],
                [helper.make_tensor_value_info("y", dtype, None)],
                initializer=[tensor("w", w, dtype)],
            )
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            try:
                s = session(model, args.threads)
                value = feed(x, dtype)
                secs = best_seconds(lambda: s.run(None, {"x": value}))
                print(f"{label:<26} {name}: {secs * 1e3:7.1f} ms  {flop / secs / 1e9:6.0f} GFLOP/s")
            except Exception as e:  # ONNX Runtime's own refusal is the result
                print(f"{label:<26} {name}: cannot run: {str(e).splitlines()[0][:140]}")


def attention(args):
    batch, seq, hidden, heads = 2, 4096, 320, 8
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((hidden, 3 * hidden), dtype=np.float32) * 0.05, "w")
    split = numpy_helper.from_array(np.array([hidden] * 3, dtype=np.int64), "split")
    x_info = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, seq, hidden])]
    y_info = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    fused = helper.make_model(
        helper.make_graph(
            [helper.make_node("Attention", ["x", "w"], ["y"], domain="com.microsoft", num_heads=heads)],
            "attention", x_info, y_info, initializer=[w],
        ),
        opset_imports=opsets,
    )
    mha = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("MatMul", ["x", "w"], ["qkv"]),
                helper.make_node("Split", ["qkv", "split"], ["q", "k", "v"], axis=2),
                helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["y"], domain="com.microsoft", num_heads=heads),
            ],
            "mha", x_info, y_info, initializer=[w, split],
        ),
        opset_imports=opsets,
    )
    x = rng.standard_normal((batch, seq, hidden), dtype=np.float32)
    outputs = {}
    for name, model in (("Attention (fused kernel)", fused), ("MatMul + Split + MultiHeadAttention", mha)):
        s = session(model, args.threads)
        outputs[name] = s.run(None, {"x": x})[0]
        secs = best_seconds(lambda: s.run(None, {"x": x}), reps=3)
        print(f"{name:<36} {secs * 1e3:7.1f} ms")
    a, b = outputs.values()
    print(f"max difference between the two: {np.abs(a - b).max():.2e}")


def profile(args):
    unet = args.model / "unet" / "model.onnx"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.enable_mem_pattern = False
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tempfile.gettempdir()) / "anyaccel-unet-profile")
    s = ort.InferenceSession(str(unet), opts, providers=["CPUExecutionProvider"])
    latent = args.size // 8
    rng = np.random.default_rng(2)
    feeds = {}
    for i in s.get_inputs():
        if i.name == "sample":
            feeds[i.name] = rng.standard_normal((2, 4, latent, latent), dtype=np.float32)
        elif i.name == "timestep":
            dtype = np.int64 if "int64" in i.type else np.float32
            feeds[i.name] = np.full([1] * len(i.shape), 999, dtype=dtype)
        elif i.name == "encoder_hidden_states":
            feeds[i.name] = rng.standard_normal((2, 77, i.shape[2]), dtype=np.float32)
    s.run(None, feeds)  # warm-up
    s.run(None, feeds)
    events = json.loads(Path(s.end_profiling()).read_text())
    last = [e for e in events if e.get("name") == "model_run"][-1]
    per_op, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last["ts"]:
            per_op[e["args"]["op_name"]] += e["dur"]
            count[e["args"]["op_name"]] += 1
    total = sum(per_op.values())
    print(f"UNet {args.size}x{args.size}, batch 2: run {last['dur'] / 1e3:.0f} ms, kernels {total / 1e3:.0f} ms")
    for op, us in per_op.most_common(args.top):
        print(f"  {op:<26} {us / 1e3:8.1f} ms {100 * us / total:5.1f}%  ({count[op]} nodes)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("dtypes")
    sub.add_parser("attention")
    p = sub.add_parser("profile")
    p.add_argument("model", type=Path, help="optimum ONNX model folder")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    {"dtypes": dtypes, "attention": attention, "profile": profile}[args.command](args)


if __name__ == "__main__":
    main()
