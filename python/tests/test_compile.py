"""compile.py's argument checks, hashing and source resolution (the SD/SDXL ONNX
export itself runs in the Rust test crates/executor-remote/tests/compile_onnx.rs; the
SD3 and Flux exports run here, in test_compile_dit.py)."""

import json
import shutil

import pytest

from anyaccel_sidecar import compile as comp
from conftest import TINY_DIFFUSERS, TINY_ONNX


def test_static_shapes_are_neuron_only(capsys):
    with pytest.raises(SystemExit):
        comp.parse_args(["--model", "m", "--target", "onnx-fp32", "--out", "o", "--size", "512x512"])
    assert "apply to --target neuron" in capsys.readouterr().err
    a = comp.parse_args(["--model", "m", "--target", "neuron", "--out", "o", "--size", "512x768", "--batch-size", "2"])
    assert (a.size, a.batch_size) == ((512, 768), 2)
    with pytest.raises(SystemExit):
        comp.parse_args(["--model", "m", "--target", "neuron", "--out", "o", "--size", "500x512"])


def test_tree_hash_is_content_only(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(TINY_DIFFUSERS, copy)
    a, b = comp.tree_hash(TINY_DIFFUSERS), comp.tree_hash(copy)
    assert a["sha256"] == b["sha256"] and len(a["files"]) == 12
    (copy / "unet" / "config.json").write_text("{}")
    assert comp.tree_hash(copy)["sha256"] != a["sha256"]


def test_sources_are_checked(tmp_path):
    assert comp.resolve_source(str(TINY_DIFFUSERS), None) == (TINY_DIFFUSERS.resolve(), None)
    with pytest.raises(comp.CompileError, match="diffusers"):
        comp.resolve_source(str(TINY_ONNX), None)  # an ONNX folder has no vae/
    with pytest.raises(comp.CompileError, match="not a Hub repo id"):
        comp.resolve_source(str(tmp_path / "nope"), None)


def test_out_must_be_empty(tmp_path):
    (tmp_path / "x").write_text("x")
    assert comp.main(["--model", str(TINY_DIFFUSERS), "--target", "onnx-fp32", "--out", str(tmp_path)]) == 2


def test_no_optimize_is_for_onnx_fp32(capsys):
    assert comp.parse_args(["--model", "m", "--target", "onnx-fp32", "--out", "o", "--no-optimize"]).no_optimize
    with pytest.raises(SystemExit):
        comp.parse_args(["--model", "m", "--target", "onnx-int8", "--out", "o", "--no-optimize"])
    assert "--no-optimize applies to --target onnx-fp32" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        comp.parse_args(["--model", "m", "--target", "onnx-openvino", "--out", "o", "--no-optimize"])


def test_only_onnx_runtime_targets_fuse_the_unet():
    assert comp.unet_passes("onnx-fp32", no_optimize=False) == (True, False)
    assert comp.unet_passes("onnx-fp32", no_optimize=True) == (False, False)
    assert comp.unet_passes("onnx-int8", no_optimize=False) == (True, True)
    assert comp.unet_passes("onnx-openvino", no_optimize=False) == (False, False)
    assert comp.unet_passes("onnx-fp16", no_optimize=False) == (False, False)
    assert comp.TARGETS["onnx-openvino"][:2] == ("cpu", "fp32")


def _attention_model(batch=2, seq=64, hidden=16, heads=2):
    """One com.microsoft Attention node with packed QKV weights, as ONNX Runtime's UNet
    fusion emits for self-attention."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    weight = numpy_helper.from_array(rng.standard_normal((hidden, 3 * hidden), dtype=np.float32) * 0.3, "w")
    bias = numpy_helper.from_array(rng.standard_normal(3 * hidden, dtype=np.float32) * 0.1, "b")
    graph = helper.make_graph(
        [helper.make_node("Attention", ["x", "w", "b"], ["y"], name="attn", domain="com.microsoft", num_heads=heads)],
        "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, seq, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq, hidden])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    x = rng.standard_normal((batch, seq, hidden), dtype=np.float32)
    return model, x


def test_self_attention_rewrite_computes_the_same_attention():
    import numpy as np
    import onnxruntime as ort
    from onnx import helper

    model, x = _attention_model()

    def run(m):
        session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]

    want = run(model)
    assert comp._self_attention_to_mha(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["MatMul", "Split", "MultiHeadAttention"], ops
    got = run(model)
    assert np.abs(got - want).max() < 1e-5
    # a graph with nothing to rewrite is left alone
    assert comp._self_attention_to_mha(model) == 0
    # as is an Attention node the rewrite does not understand
    other, _ = _attention_model()
    other.graph.node[0].attribute.append(helper.make_attribute("unidirectional", 1))
    assert comp._self_attention_to_mha(other) == 0
    assert [n.op_type for n in other.graph.node] == ["Attention"]


def test_promote_replaces_the_model_and_its_data(tmp_path):
    import onnx

    model, _ = _attention_model()
    unet = tmp_path / "unet"
    unet.mkdir()
    onnx.save_model(model, str(unet / "model.onnx"), save_as_external_data=True, location="model.onnx_data", size_threshold=0)
    model, _ = _attention_model()  # saving moved the first copy's tensors to the data file
    comp._self_attention_to_mha(model)
    candidate = unet / "fused.onnx"
    onnx.save_model(model, str(candidate), save_as_external_data=True, location="fused.onnx_data", size_threshold=0)
    comp._promote(unet, candidate)
    assert sorted(p.name for p in unet.iterdir()) == ["model.onnx", "model.onnx_data"]
    promoted = onnx.load(str(unet / "model.onnx"))  # loads the renamed external data
    assert [n.op_type for n in promoted.graph.node] == ["MatMul", "Split", "MultiHeadAttention"]


def test_unsupported_pipelines_are_refused(tmp_path):
    src = tmp_path / "m"
    shutil.copytree(TINY_DIFFUSERS, src)
    index = src / "model_index.json"
    doc = json.loads(index.read_text())
    for cls in ("FluxFillPipeline", "FluxKontextPipeline", "StableDiffusion3ControlNetPipeline", "StableDiffusionInpaintPipeline"):
        doc["_class_name"] = cls
        index.write_text(json.dumps(doc))
        with pytest.raises(comp.CompileError, match=f"{cls} is not a pipeline anyaccel serves; supported: StableDiffusionPipeline"):
            comp.resolve_source(str(src), None)
    doc["_class_name"] = "StableDiffusionXLImg2ImgPipeline"
    doc["text_encoder"] = [None, None]
    index.write_text(json.dumps(doc))
    with pytest.raises(comp.CompileError, match="refiner"):
        comp.resolve_source(str(src), None)


def test_per_sample_timesteps_match_the_scalar_graph(tmp_path):
    import numpy as np
    import onnxruntime as ort

    unet = tmp_path / "unet"
    shutil.copytree(TINY_ONNX / "unet", unet)
    report = comp.per_sample_timesteps(unet)
    # The check runs two rows at different steps against each alone on the scalar graph.
    assert report["applied"] and report["check"]["max_abs_error"] < 1e-4, report
    session = ort.InferenceSession(str(unet / "model.onnx"), providers=["CPUExecutionProvider"])
    ts = next(i for i in session.get_inputs() if i.name == "timestep")
    assert len(ts.shape) == 1 and isinstance(ts.shape[0], str)
    # Idempotent: a second compile pass leaves it alone.
    assert comp.per_sample_timesteps(unet) == {"applied": False, "reason": "already per-sample"}
