"""compile.py's argument checks, hashing and source resolution (the ONNX export
itself runs in the Rust test crates/executor-remote/tests/compile_onnx.rs)."""

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
