"""`anyaccel compile --target onnx-fp16` on a CPU-only machine: optimum's fp32 export,
then ONNX Runtime's CUDA fusions and the fp16 conversion. The fused UNet cannot run
here (NhwcConv, GroupNorm, SkipGroupNorm and BiasSplitGelu have CUDA kernels only), so
its structure is checked; the CLIP text encoder's fused ops have CPU fp16 kernels, so it
is run against the fp32 export."""

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from anyaccel_sidecar import compile as comp
from conftest import TINY_DIFFUSERS, TINY_SDXL_DIFFUSERS


def _compile_fp16(tmp_path, monkeypatch, src):
    """Compiles src for onnx-fp16 and keeps a copy of the fp32 graphs the fp16 pass started from."""
    fp32 = tmp_path / "fp32"
    original = comp.convert_fp16

    def snapshot(out, family, validate=True):
        shutil.copytree(out, fp32)
        return original(out, family, validate)

    monkeypatch.setattr(comp, "convert_fp16", snapshot)
    out = tmp_path / "fp16"
    assert comp.main(["--model", str(src), "--target", "onnx-fp16", "--out", str(out)]) == 0
    return out, fp32, json.loads((out / comp.MANIFEST).read_text())


def _float_initializers(path):
    model = onnx.load(str(path), load_external_data=False)
    kinds = {}
    for t in model.graph.initializer:
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            kinds.setdefault(onnx.TensorProto.DataType.Name(t.data_type), []).append(t.name)
    return model, kinds


def _ops(model):
    counts = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def _check_unet(out, manifest):
    model, kinds = _float_initializers(out / "unet" / "model.onnx")
    ops = _ops(model)
    # the tiny UNet has every SD pattern: attention, GroupNorm (+ residual), GEGLU, convs
    for op in ("MultiHeadAttention", "GroupNorm", "SkipGroupNorm", "BiasSplitGelu", "BiasAdd", "NhwcConv"):
        assert ops.get(op, 0) > 0, (op, ops)
    # the only fp32 weights left are GroupNorm/SkipGroupNorm's gamma and beta (ONNX
    # Runtime's GroupNorm takes them fp32 whatever the activations' dtype)
    fp32_users = {n.op_type for n in model.graph.node for i in n.input if i in set(kinds.get("FLOAT", []))}
    assert fp32_users <= {"GroupNorm", "SkipGroupNorm"}, fp32_users
    assert len(kinds["FLOAT16"]) > len(kinds.get("FLOAT", []))
    # fp16 in and out (the executor converts to each graph's declared dtypes), but the
    # timestep and its sinusoid phases stay fp32
    io = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert io["sample"] == io["encoder_hidden_states"] == io["out_sample"] == onnx.TensorProto.FLOAT16
    assert io["timestep"] == onnx.TensorProto.FLOAT
    outputs = {o: n for n in model.graph.node for o in n.output}
    sin = next(n for n in model.graph.node if n.op_type == "Sin")
    mul = outputs[sin.input[0]]
    assert mul.op_type == "Mul"
    freq = next(outputs[i] for i in mul.input if i in outputs and outputs[i].op_type == "Constant")
    assert freq.attribute[0].t.data_type == onnx.TensorProto.FLOAT, "the frequencies must not be rounded to fp16"

    passes = manifest["passes"]["fp16"]["unet"]
    assert passes["fused"]["MultiHeadAttention"] == ops["MultiHeadAttention"]
    assert passes["fused"]["GroupNorm"] == ops["GroupNorm"]
    assert passes["kept_fp32"]["inputs"] == ["timestep"] and passes["kept_fp32"]["timestep embedding"]["nodes"] >= 3
    assert passes["check"]["ran"] is False and "CUDA" in passes["check"]["reason"]
    with pytest.raises(Exception, match="Kernel not found|NOT_IMPLEMENTED"):
        ort.InferenceSession(str(out / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])


def _check_vae_fp32(out, manifest):
    for vae in ("vae_decoder", "vae_encoder"):
        _, kinds = _float_initializers(out / vae / "model.onnx")
        assert "FLOAT16" not in kinds and kinds["FLOAT"], vae
        assert manifest["passes"]["fp16"][vae]["kept_fp32"] == "whole component"


def _check_text_encoder(out, fp32, manifest, name="text_encoder"):
    model, kinds = _float_initializers(out / name / "model.onnx")
    assert "FLOAT" not in kinds and kinds["FLOAT16"]
    assert _ops(model).get("SkipLayerNormalization", 0) > 0
    assert manifest["passes"]["fp16"][name]["fused"]["SkipLayerNormalization"] > 0
    # CLIP's fused ops (LayerNormalization, SkipLayerNormalization, QuickGelu) run in fp16 on the CPU
    ids = np.random.default_rng(0).integers(0, 99, size=(2, 77)).astype(np.int64)
    want = ort.InferenceSession(str(fp32 / name / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})
    got = ort.InferenceSession(str(out / name / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})
    assert got[0].dtype == np.float16
    err = np.abs(got[0].astype(np.float64) - want[0])
    rel = np.sqrt((err**2).mean() / (want[0].astype(np.float64) ** 2).mean())
    assert rel < 5e-3, rel


def test_sd15_onnx_fp16_on_cpu(tmp_path, monkeypatch):
    assert ort.get_available_providers().count("CUDAExecutionProvider") == 0, "this test is for CPU-only nodes"
    out, fp32, manifest = _compile_fp16(tmp_path, monkeypatch, TINY_DIFFUSERS)
    assert (manifest["target"], manifest["dtype"], manifest["accelerator"]) == ("onnx-fp16", "fp16", "cuda")
    assert manifest["passes"]["per_sample_timesteps"]["applied"]
    _check_unet(out, manifest)
    _check_vae_fp32(out, manifest)
    _check_text_encoder(out, fp32, manifest)


def test_sdxl_onnx_fp16_on_cpu(tmp_path, monkeypatch):
    out, fp32, manifest = _compile_fp16(tmp_path, monkeypatch, TINY_SDXL_DIFFUSERS)
    assert manifest["family"] == "sdxl"
    _check_unet(out, manifest)
    _check_vae_fp32(out, manifest)
    for name in ("text_encoder", "text_encoder_2"):
        _check_text_encoder(out, fp32, manifest, name)


def test_timestep_sinusoid_nodes():
    from onnx import TensorProto, helper

    freq = helper.make_tensor("f", TensorProto.FLOAT, [4], [1.0, 0.1, 0.01, 0.001])
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["freq"], name="c", value=freq),
            helper.make_node("Unsqueeze", ["timestep", "axes"], ["t1"], name="u"),
            helper.make_node("Mul", ["t1", "freq"], ["phase"], name="m"),
            helper.make_node("Sin", ["phase"], ["s"], name="sin"),
            helper.make_node("Cos", ["phase"], ["c2"], name="cos"),
            helper.make_node("Concat", ["s", "c2"], ["emb"], name="cat", axis=-1),
            # another branch of the timestep, not feeding a sinusoid
            helper.make_node("Neg", ["timestep"], ["other"], name="neg"),
        ],
        "g",
        [helper.make_tensor_value_info("timestep", TensorProto.FLOAT, ["b"])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, None), helper.make_tensor_value_info("other", TensorProto.FLOAT, None)],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    assert comp._timestep_sinusoid_nodes(graph) == ["c", "cos", "m", "sin", "u"]
