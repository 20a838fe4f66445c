"""scripts/gpu/check.sh --dry-run end to end (CPU, tiny fixtures), so the GPU check's
logic is tested before a GPU runs it; and a broken step failing with its name."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))

from gpu_check import check  # noqa: E402

BIN = Path(os.environ.get("ANYACCEL_BIN", REPO / "target" / "debug" / "anyaccel"))
needs_bin = pytest.mark.skipif(not BIN.is_file(), reason=f"no anyaccel binary at {BIN} (cargo build -p anyaccel)")


def run_check(out: Path, *extra, timeout=240):
    env = {**os.environ, "ANYACCEL_BIN": str(BIN), "GPU_CHECK_PYTHON": sys.executable}
    return subprocess.run([str(REPO / "scripts" / "gpu" / "check.sh"), "--dry-run", "--out", str(out), *extra],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    r = run_check(out)
    results = json.loads((out / "gpu-check.json").read_text()) if (out / "gpu-check.json").is_file() else None
    return r, out, results


@needs_bin
def test_dry_run_passes_every_step(dry_run):
    r, out, results = dry_run
    assert r.returncode == 0, r.stderr[-4000:]
    assert results is not None
    assert results["mode"] == "dry-run (CPU)"
    assert list(results["steps"]) == list(check.STEPS)
    for name, step in results["steps"].items():
        assert step["status"] == "ok", (name, step)
        assert step["seconds"] >= 0
    assert results["failed_steps"] == [] and results["ok"] is True


@needs_bin
def test_dry_run_compares_images_within_tolerance(dry_run):
    _, _, results = dry_run
    cases = results["steps"]["images"]["cases"]
    assert set(cases) == {"tiny-sd15", "tiny-sd2", "tiny-sdxl"}
    for name, c in cases.items():
        assert c["max_abs"] <= check.TOLERANCE, (name, c)
        assert not c["black_or_flat"] and not c["reference_nan_latents"], (name, c)
    names = {c["name"] for c in results["checks"]}
    for model in cases:
        assert f"{model}: max |anyaccel - diffusers| pixel" in names
        assert f"{model}: anyaccel image not black/flat" in names
    for model in ("tiny-sd15", "tiny-sdxl"):
        assert f"{model}: max |torch sidecar - diffusers| pixel" in names
        assert cases[model]["sidecar"]["max_abs"] <= check.TOLERANCE
    assert all(c["ok"] for c in results["checks"])


@needs_bin
def test_dry_run_times_every_engine_and_writes_the_table(dry_run):
    _, out, results = dry_run
    torch_cases = results["steps"]["torch_timing"]["models"]["sd15"]["cases"]
    assert {"eager_b1", "eager_b4", "eager_b8", "eager_turbo", "compiled_b1"} <= set(torch_cases)
    ours = results["steps"]["anyaccel_timing"]["models"]["sd15"]
    for level in ("b1", "turbo", "b4", "b8"):
        assert ours[level]["p50_s"] > 0 and ours[level]["images_per_s"] > 0, level
    assert ours["b1"]["memory"]["process_peak_bytes"] > 0
    graphed = results["steps"]["anyaccel_timing"]["models"]["sd15_graphs"]
    assert {"b1", "turbo"} <= set(graphed) and "b4" not in graphed
    assert graphed["cuda_graphs"] is False  # the CPU has no CUDA graphs
    assert graphed["b1"]["p50_s"] > 0 and graphed["turbo"]["p50_s"] > 0
    sidecar = results["steps"]["anyaccel_timing"]["models"]["sd15_sidecar"]
    assert ours["runtime"] == "onnxruntime on cpu; conditioning bound once per batch"
    assert sidecar["runtime"].startswith("python sidecar: torch ")
    assert "--executor remote" in sidecar["server_argv"] and "tiny-sd15-diffusers" in sidecar["server_argv"]
    assert sidecar["b1"]["p50_s"] > 0 and sidecar["turbo"]["p50_s"] > 0 and "b4" not in sidecar
    goals = {g["goal"]: g for g in results["goals"]}
    assert goals["SD 1.5 batch 1: diffusers + torch.compile time / anyaccel time"]["measured"] > 0
    assert all(g["dry_run"] for g in results["goals"])
    assert len(goals) == len(results["goals"]), "goal names must be unique"
    assert goals["SD 1.5 512x512, 50 steps, CFG, batch 1 with --cuda-graphs (off on the CPU): anyaccel latency"]["measured"] > 0
    assert goals["SD 1.5 batch 1: torch sidecar (eager) time / anyaccel ONNX time"]["measured"] > 0
    md = (out / "gpu-check.md").read_text()
    for heading in ("## Steps", "## Checks", "## Timings", "## Goals"):
        assert heading in md
    assert "| anyaccel serve + bench | sd15 | b1" in md
    assert "| anyaccel serve + bench (torch sidecar) | sd15_sidecar | b1" in md
    assert "- sd15: onnxruntime on cpu; conditioning bound once per batch" in md
    assert (out / "gpu-check.log").stat().st_size > 0
    assert (out / "gpu-check-images.png").is_file()


@needs_bin
def test_a_broken_step_fails_with_its_name(tmp_path):
    r = run_check(tmp_path, "--break", "build", timeout=120)
    assert r.returncode == 1
    assert "FAILED step(s): build" in r.stderr
    results = json.loads((tmp_path / "gpu-check.json").read_text())
    assert results["failed_steps"] == ["build"]
    assert results["steps"]["env"]["status"] == "ok"
    assert results["steps"]["compile"]["status"] == "skipped"
    assert results["steps"]["report"]["status"] == "ok"
    assert "Failed steps: build." in (tmp_path / "gpu-check.md").read_text()


def test_pixel_comparison_and_flat_images():
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 3
    c = check.compare(a, b)
    assert c["max_abs"] == 3 and c["pixels_over_tolerance"] == 1
    assert check.compare(a, a)["psnr_db"] == float("inf")
    assert check.image_is_flat(a)
    assert not check.image_is_flat(np.random.default_rng(0).integers(0, 255, (8, 8, 3)))


def test_goals_from_measurements():
    results = {"steps": {
        "anyaccel_timing": {"models": {"sd15": {"b1": {"p50_s": 0.4, "memory": {"process_peak_bytes": 4e9}},
                                                "turbo": {"p50_s": 0.05}}}},
        "torch_timing": {"models": {"sd15": {"cases": {"compiled_b1": {"median_s": 0.6},
                                                       "eager_b1": {"median_s": 1.0}}}}},
    }}
    g = {x["goal"]: x for x in check.goals(results, dry=False)}
    assert g["SD 1.5 512x512, 50 steps, CFG, batch 1: anyaccel latency"]["met"] is True
    assert g["SD 1.5 batch 1: diffusers + torch.compile time / anyaccel time"]["measured"] == pytest.approx(1.5)
    assert g["SD-Turbo-sized 512x512, 1 step, no CFG: anyaccel latency"]["met"] is False
    assert g["SDXL 1024x1024, 30 steps, CFG, batch 1: anyaccel latency"]["met"] is None
    assert g["SD 1.5 batch 1: anyaccel server's device memory"]["met"] is True
    assert g["SD 1.5 512x512, 50 steps, CFG, batch 1 with --cuda-graphs: anyaccel latency"]["met"] is None


def test_extra_servers_that_failed_or_were_skipped_are_in_the_table():
    results = {"mode": "gpu", "started_at": "now", "budget_s": 540, "big_models": ["sd15"], "checks": [], "goals": [],
               "failed_steps": [], "steps": {"anyaccel_timing": {"status": "ok", "seconds": 1.0, "models": {
                   "sd15_graphs": {"variant": "graphs", "failed": "session creation: not all nodes on CUDA"},
                   "sd15_sidecar": {"skipped": "90 s left, under 180 s"}}}}}
    md = check.markdown(results)
    assert "| sd15_graphs | failed: session creation: not all nodes on CUDA |" in md
    assert "| sd15_sidecar | skipped: 90 s left, under 180 s |" in md
