"""`anyaccel compile` of SD3 and Flux sources: family checks and refusals, the ONNX
export (the I/O the Rust ONNX loader reads), the manifest, the per-row timestep check
on the transformer, the CPU fusion and int8 passes, and the exported transformer
against diffusers' on an input of another size than the export traced."""

import json
import shutil

import numpy as np
import pytest
import torch

from anyaccel_sidecar import compile as comp


def onnx_io(path):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s, {i.name: (i.type, i.shape) for i in s.get_inputs()}, {o.name: (o.type, o.shape) for o in s.get_outputs()}


def test_dit_families_and_refusals(tmp_path, sd3_model, flux_model, flux_schnell_model):
    assert comp.family_of(sd3_model) == "sd3" and comp.family_of(flux_model) == comp.family_of(flux_schnell_model) == "flux"
    assert comp.resolve_source(str(flux_model), None) == (flux_model.resolve(), None)
    src = tmp_path / "m"
    shutil.copytree(flux_model, src)
    cfg = src / "transformer" / "config.json"
    doc = json.loads(cfg.read_text())
    doc["in_channels"] = 384  # FLUX.1 Fill's packed image + mask channels
    cfg.write_text(json.dumps(doc))
    with pytest.raises(comp.CompileError, match="takes 384 input channels, not 64 for its 16-channel VAE"):
        comp.family_of(src)
    shutil.rmtree(src / "transformer")
    with pytest.raises(comp.CompileError, match="no transformer/ folder"):
        comp.resolve_source(str(src), None)
    src3 = tmp_path / "s"
    shutil.copytree(sd3_model, src3, ignore=shutil.ignore_patterns("*.safetensors"))
    cfg = src3 / "transformer" / "config.json"
    cfg.write_text(json.dumps(json.loads(cfg.read_text()) | {"in_channels": 33}))
    with pytest.raises(comp.CompileError, match="takes 33 input channels, not 16"):
        comp.family_of(src3)


def test_neuron_options_are_checked(capsys, tmp_path, sd3_model):
    with pytest.raises(SystemExit):
        comp.parse_args(["--model", "m", "--target", "onnx-fp32", "--out", "o", "--tensor-parallel-size", "8"])
    assert "apply to --target neuron" in capsys.readouterr().err
    a = comp.parse_args(["--model", "m", "--target", "neuron", "--out", "o", "--tensor-parallel-size", "8", "--sequence-length", "256"])
    assert (a.tensor_parallel_size, a.sequence_length) == (8, 256)
    # optimum-neuron has no SD3 pipeline: refused before any SDK import
    with pytest.raises(comp.CompileError, match="cannot compile SD3"):
        comp.export_neuron(sd3_model, tmp_path / "out", None, None)
    assert comp.native_size(sd3_model, "sd3") == (64, 64), "sample_size 8 latent cells x 8"


def test_sd3_onnx_fp32(tmp_path, sd3_model):
    out = tmp_path / "sd3-onnx"
    assert comp.main(["--model", str(sd3_model), "--target", "onnx-fp32", "--out", str(out)]) == 0
    manifest = json.loads((out / comp.MANIFEST).read_text())
    assert (manifest["family"], manifest["pipeline_class"], manifest["denoiser"]) == ("sd3", "StableDiffusion3Pipeline", "transformer")
    ts = manifest["passes"]["per_sample_timesteps"]
    # optimum exports the transformer's timestep as [step] already: checked, not rewritten
    assert ts["applied"] is False and ts["timestep_shape"] == ["step"], ts
    assert ts["check"]["max_abs_error"] < 1e-4 and ts["check"]["timestep_moves_output_by"] > 1e-2, ts
    fusion = manifest["passes"]["cpu_fusion"]
    assert fusion["fusions"] == "mmdit" and fusion["fused"].get("MultiHeadAttention", 0) > 0, fusion
    assert fusion["check"]["relative_rms_error"] < 1e-4
    for component in ("text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae_decoder", "vae_encoder"):
        assert (out / component / "model.onnx").is_file(), component

    cfg = json.loads((sd3_model / "transformer" / "config.json").read_text())
    joint, pooled = cfg["joint_attention_dim"], cfg["pooled_projection_dim"]
    session, inputs, outputs = onnx_io(out / "transformer" / "model.onnx")
    assert inputs == {
        "hidden_states": ("tensor(float)", ["batch_size", 16, "height", "width"]),
        "encoder_hidden_states": ("tensor(float)", ["batch_size", "sequence_length", joint]),
        "pooled_projections": ("tensor(float)", ["batch_size", pooled]),
        "timestep": ("tensor(float)", ["step"]),
    }
    assert outputs == {"out_hidden_states": ("tensor(float)", ["batch_size", 16, "height", "width"])}
    _, inputs, outputs = onnx_io(out / "text_encoder_3" / "model.onnx")
    assert inputs == {"input_ids": ("tensor(int64)", ["batch_size", "sequence_length"])}
    assert outputs == {"last_hidden_state": ("tensor(float)", ["batch_size", "sequence_length", joint])}
    _, _, outputs = onnx_io(out / "text_encoder_2" / "model.onnx")
    # CLIPTextModelWithProjection with every layer's hidden state (hidden_states.N; N = layers is the last)
    layers = json.loads((sd3_model / "text_encoder_2" / "config.json").read_text())["num_hidden_layers"]
    assert list(outputs) == ["text_embeds", "last_hidden_state"] + [f"hidden_states.{i}" for i in range(layers + 1)]
    _, inputs, outputs = onnx_io(out / "vae_decoder" / "model.onnx")
    assert inputs["latent_sample"][1][1] == 16 and outputs["sample"][1][1] == 3

    # the fused graph against diffusers' transformer at a size and text length it was not traced at
    from diffusers import SD3Transformer2DModel

    model = SD3Transformer2DModel.from_pretrained(str(sd3_model), subfolder="transformer").eval()
    rng = np.random.default_rng(5)
    feeds = {
        "hidden_states": rng.standard_normal((2, 16, 12, 8)).astype(np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 93, joint)).astype(np.float32),
        "pooled_projections": rng.standard_normal((2, pooled)).astype(np.float32),
        "timestep": np.array([1000.0, 20.0], np.float32),
    }
    with torch.inference_mode():
        want = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}, return_dict=False)[0].numpy()
    got = session.run(None, feeds)[0]
    assert got.shape == (2, 16, 12, 8) and np.abs(got - want).max() < 1e-4


def test_flux_onnx_fp32_and_int8(tmp_path, flux_model):
    out = tmp_path / "flux-onnx"
    assert comp.main(["--model", str(flux_model), "--target", "onnx-fp32", "--out", str(out)]) == 0
    manifest = json.loads((out / comp.MANIFEST).read_text())
    assert (manifest["family"], manifest["pipeline_class"], manifest["denoiser"]) == ("flux", "FluxPipeline", "transformer")
    passes = manifest["passes"]
    assert passes["per_sample_timesteps"]["timestep_shape"] == ["step"]
    assert passes["per_sample_timesteps"]["check"]["max_abs_error"] < 1e-4
    assert passes["cpu_fusion"]["fusions"] == "mmdit" and passes["cpu_fusion"]["check"]["relative_rms_error"] < 1e-4
    assert sorted(p.name for p in (out / "transformer").iterdir()) == ["config.json", "model.onnx", "model.onnx_data"]

    cfg = json.loads((flux_model / "transformer" / "config.json").read_text())
    joint, pooled = cfg["joint_attention_dim"], cfg["pooled_projection_dim"]
    session, inputs, outputs = onnx_io(out / "transformer" / "model.onnx")
    assert inputs == {
        "hidden_states": ("tensor(float)", ["batch_size", "packed_height_width", 64]),
        "encoder_hidden_states": ("tensor(float)", ["batch_size", "sequence_length", joint]),
        "pooled_projections": ("tensor(float)", ["batch_size", pooled]),
        "timestep": ("tensor(float)", ["step"]),
        # position ids are int64 in the export (the torch transformer takes floats)
        "img_ids": ("tensor(int64)", ["packed_height_width", 3]),
        "txt_ids": ("tensor(int64)", ["sequence_length", 3]),
        "guidance": ("tensor(float)", ["batch_size"]),
    }
    assert outputs == {"out_hidden_states": ("tensor(float)", ["batch_size", "packed_height_width", 64])}
    _, inputs, outputs = onnx_io(out / "text_encoder" / "model.onnx")
    assert list(outputs) == ["last_hidden_state", "pooler_output"]
    _, _, outputs = onnx_io(out / "text_encoder_2" / "model.onnx")
    assert list(outputs) == ["last_hidden_state"]

    # the fused graph against diffusers' transformer on a non-square size and a text
    # length it was not traced at
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel.from_pretrained(str(flux_model), subfolder="transformer").eval()
    rng = np.random.default_rng(5)
    rows, side_h, side_w, text = 2, 3, 5, 7
    grid = np.zeros((side_h, side_w, 3), np.int64)
    grid[..., 1] = np.arange(side_h)[:, None]
    grid[..., 2] = np.arange(side_w)[None, :]
    feeds = {
        "hidden_states": rng.standard_normal((rows, side_h * side_w, 64)).astype(np.float32),
        "encoder_hidden_states": rng.standard_normal((rows, text, joint)).astype(np.float32),
        "pooled_projections": rng.standard_normal((rows, pooled)).astype(np.float32),
        "timestep": np.array([0.9, 0.3], np.float32),
        "img_ids": grid.reshape(-1, 3),
        "txt_ids": np.zeros((text, 3), np.int64),
        "guidance": np.array([3.5, 2.0], np.float32),
    }

    def torch_run(f):
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v if "ids" not in k else v.astype(np.float32)) for k, v in f.items()}, return_dict=False)[0].numpy()

    want = torch_run(feeds)
    got = session.run(None, feeds)[0]
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-4
    # the position ids matter (a transposed grid is another image layout)
    moved = dict(feeds, img_ids=grid.transpose(1, 0, 2).reshape(-1, 3)[:, [0, 2, 1]])
    assert np.abs(session.run(None, moved)[0] - got).max() > 1e-3

    # onnx-int8's pass on this transformer: its MatMuls to int8, the error recorded
    int8 = tmp_path / "int8"
    shutil.copytree(out / "transformer", int8)
    report = comp.quantize_unet_int8(int8)
    assert 0 < report["check"]["relative_rms_error"] < 0.1, report
    assert comp.unet_passes("onnx-int8", no_optimize=False) == (True, True)
    q, _, _ = onnx_io(int8 / "model.onnx")
    got8 = q.run(None, feeds)[0]
    assert 0 < np.sqrt(((got8 - want) ** 2).mean() / (want**2).mean()) < 0.1
