"""Issue 16's GPU check as one run: scripts/gpu/check.sh calls this.

    python -m gpu_check.check --out DIR [--dry-run] [--big sd15[,sdxl]] [--budget 480]

Steps (each timed, capped, recorded in DIR/gpu-check.json, then DIR/gpu-check.md):
  env          GPU (nvidia-smi), torch/CUDA, ONNX Runtime and its providers, and
               which library setting lets `anyaccel --device cuda` start
  build        random-weight diffusers models from configs: a tiny SD 2.x (the
               tiny-sd2v fixture's configs), the SD 1.5-sized model (and SDXL-sized)
  compile      `anyaccel compile --target onnx-fp16` of the tiny models; the big
               models compile in the background while the next steps run
  images       tiny fixtures through `anyaccel generate --device cuda` against
               diffusers fp16 references made here: max pixel difference <= 2/255;
               no NaN/black image (SD 1.5, SD 2.x, SDXL)
  compile_big  waits for the background compile
  torch_timing diffusers fp16 (SDPA) and diffusers + torch.compile on the big model's
               weights (compiled while the models compiled; timed after, on a quiet
               machine)
  anyaccel_timing  `anyaccel serve` the compiled big model, `anyaccel bench` at
               batch 1 (50 steps, CFG), 1 step without CFG (SD-Turbo's work), batch
               4 and 8; the server process's device memory
  report       the goals against the measurements; JSON and Markdown

A failed step or check makes the exit status non-zero and names the step; later
steps still run where they do not need the failed one, and the results written so
far stay in the JSON. --dry-run runs every step on the CPU with the tiny fixtures
(CPU execution provider, fp32, few steps, torch.compile's eager backend) so that
the logic is tested where no GPU is.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures" / "models"
TOLERANCE = 2  # max |pixel difference| out of 255 against diffusers (see docs/benchmarks.md)
STEPS = ("env", "build", "compile", "images", "compile_big", "torch_timing", "anyaccel_timing", "report")
PROMPT = "a photograph of an astronaut riding a horse"
GOALS_GB = 1e9


class StepError(Exception):
    pass


@dataclass
class Plan:
    """What one mode runs: the GPU run and the dry run differ only in these numbers."""
    device: str
    target: str
    dtype: str
    tiny_steps: int
    big_size: tuple
    big_steps: int
    sdxl_size: tuple
    sdxl_steps: int
    reps: int
    batches: list
    bench_secs: float
    compile: dict | None
    caps: dict = field(default_factory=dict)

    @staticmethod
    def gpu() -> "Plan":
        return Plan(device="cuda", target="onnx-fp16", dtype="fp16", tiny_steps=20, big_size=(512, 512),
                    big_steps=50, sdxl_size=(1024, 1024), sdxl_steps=30, reps=3, batches=[4, 8],
                    bench_secs=8.0, compile={"mode": "reduce-overhead", "warmup_runs": 2},
                    caps={"env": 240, "build": 150, "build_sdxl": 360, "compile": 150, "images": 150, "torch_timing": 300,
                          "compile_big": 420, "compile_big_sdxl": 600, "anyaccel_timing": 240, "report": 30})

    @staticmethod
    def dry() -> "Plan":
        # the tiny fixtures' own size; torch.compile's eager backend exercises the
        # wrapping and timing code without Inductor's minutes of C++ compilation
        return Plan(device="cpu", target="onnx-fp32", dtype="fp32", tiny_steps=8, big_size=(64, 64),
                    big_steps=4, sdxl_size=(64, 64), sdxl_steps=4, reps=2, batches=[4, 8],
                    bench_secs=1.5, compile={"backend": "eager", "warmup_runs": 1},
                    caps={"env": 60, "build": 60, "build_sdxl": 60, "compile": 120, "images": 90, "torch_timing": 120,
                          "compile_big": 120, "compile_big_sdxl": 120, "anyaccel_timing": 120, "report": 30})


# ---------------------------------------------------------------------------
# processes


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Check:
    def __init__(self, args):
        self.args = args
        self.dry = args.dry_run
        self.plan = Plan.dry() if self.dry else Plan.gpu()
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work or (self.out / "work" if self.dry else "/tmp/gpu-check-work")).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "gpu-check.log"
        self.log_path.write_text("")
        self.python = args.python or sys.executable
        self.bin = Path(args.bin).resolve()
        self.started = time.time()
        self.deadline = self.started + args.budget
        self.big = [b for b in args.big.split(",") if b] if args.big else []
        self.broken = set(filter(None, (args.break_step or os.environ.get("GPU_CHECK_BREAK", "")).split(",")))
        self.env = dict(os.environ)
        pp = [str(REPO / "python")] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        self.env["PYTHONPATH"] = os.pathsep.join(pp)
        self.env.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.env["PYTHONUNBUFFERED"] = "1"
        if args.ort_lib:
            self.env["ANYACCEL_ORT_LIB"] = str(Path(args.ort_lib).resolve())
        self.results = {
            "format_version": 1,
            "tool": "scripts/gpu/check.sh",
            "mode": "dry-run (CPU)" if self.dry else "gpu",
            "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "budget_s": args.budget,
            "plan": {k: v for k, v in self.plan.__dict__.items()},
            "big_models": self.big,
            "tolerance_max_abs_pixel": TOLERANCE,
            "steps": {},
            "checks": [],
            "goals": [],
            "failed_steps": [],
        }
        self.models = {}      # name -> diffusers folder
        self.artifacts = {}   # name -> compiled ONNX folder
        self.bg = {}          # background jobs
        self.procs = []       # every process started, each in its own process group

    # -- logging and results

    def log(self, msg: str) -> None:
        line = f"[gpu-check {time.time() - self.started:6.1f}s] {msg}"
        print(line, file=sys.stderr, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.time() - self.started, 2)
        tmp = self.out / "gpu-check.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=1, default=str) + "\n")
        tmp.replace(self.out / "gpu-check.json")

    def remaining(self) -> float:
        return self.deadline - time.time()

    def cap(self, name: str) -> float:
        # a step may use its own cap, but never the time the report needs
        return max(5.0, min(self.plan.caps.get(name, 120), self.remaining() - 15))

    def check(self, step: str, name: str, ok: bool, value, limit, note: str = "") -> bool:
        self.results["checks"].append({"step": step, "name": name, "ok": bool(ok), "value": value,
                                       "limit": limit, "note": note})
        self.log(f"check {name}: {'ok' if ok else 'FAILED'} ({value} vs {limit})")
        return ok

    def run(self, name: str, argv, timeout: float, env=None, cwd=None) -> subprocess.CompletedProcess:
        """Runs a command in its own process group, output to work/logs/NAME.log; its
        tail goes into gpu-check.log. Raises StepError on a timeout or non-zero exit."""
        logs = self.work / "logs"
        logs.mkdir(exist_ok=True)
        path = logs / f"{name}.log"
        self.log(f"$ {' '.join(map(str, argv))}  (cap {timeout:.0f}s)")
        t = time.time()
        with open(path, "w") as f:
            proc = subprocess.Popen([str(a) for a in argv], stdout=f, stderr=subprocess.STDOUT,
                                    env=env or self.env, cwd=cwd or REPO, start_new_session=True)
            self.procs.append(proc)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill(proc)
                proc.wait()
                self._tail(name, path)
                raise StepError(f"{name}: timed out after {timeout:.0f}s")
        self._tail(name, path, lines=40 if rc == 0 else 120)
        if rc != 0:
            raise StepError(f"{name}: exit status {rc}; last lines: {self._last(path, 6)}")
        self.log(f"{name}: done in {time.time() - t:.1f}s")
        return subprocess.CompletedProcess(argv, rc, stdout=path.read_text(errors="replace"))

    def spawn(self, name: str, argv, env=None) -> tuple[subprocess.Popen, Path]:
        logs = self.work / "logs"
        logs.mkdir(exist_ok=True)
        path = logs / f"{name}.log"
        self.log(f"$ {' '.join(map(str, argv))}  (background)")
        f = open(path, "w")
        proc = subprocess.Popen([str(a) for a in argv], stdout=f, stderr=subprocess.STDOUT,
                                env=env or self.env, cwd=REPO, start_new_session=True)
        self.procs.append(proc)
        return proc, path

    def _last(self, path: Path, n: int) -> str:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        return " | ".join(lines[-n:])[-1200:]

    def _tail(self, name: str, path: Path, lines: int = 60) -> None:
        text = path.read_text(errors="replace").replace("\r", "\n").splitlines()
        with open(self.log_path, "a") as f:
            f.write(f"---- {name} (last {min(lines, len(text))} of {len(text)} lines) ----\n")
            f.write("\n".join(ln[:400] for ln in text[-lines:]) + "\n----\n")

    # -- steps

    def step(self, name: str, fn, needs=()):
        rec = {"status": "running"}
        self.results["steps"][name] = rec
        missing = [n for n in needs if self.results["steps"].get(n, {}).get("status") not in ("ok",)]
        if missing:
            rec.update(status="skipped", reason=f"needs {', '.join(missing)}")
            self.log(f"== {name}: skipped (needs {', '.join(missing)})")
            self.save()
            return None
        self.log(f"== {name}")
        t = time.time()
        try:
            if name in self.broken:
                raise StepError(f"broken on purpose (--break {name})")
            checks_before = len(self.results["checks"])
            data = fn(rec)
            failed = [c["name"] for c in self.results["checks"][checks_before:] if not c["ok"]]
            rec["status"] = "failed" if failed else "ok"
            if failed:
                rec["error"] = f"failed checks: {', '.join(failed)}"
            if data:
                rec.update(data)
        except Exception as e:  # noqa: BLE001 - every step's failure is recorded, then the run goes on
            rec["status"] = "failed"
            rec["error"] = f"{type(e).__name__}: {e}"
            self.log(f"{name} FAILED: {rec['error']}")
            with open(self.log_path, "a") as f:
                f.write(traceback.format_exc())
        rec["seconds"] = round(time.time() - t, 2)
        if rec["status"] == "failed":
            self.results["failed_steps"].append(name)
        self.save()
        return rec

    # env -------------------------------------------------------------------

    def s_env(self, rec):
        info = {"host": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count(),
                "python": self.python, "anyaccel": str(self.bin)}
        smi = shutil.which("nvidia-smi")
        if smi:
            q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,compute_cap",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            info["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
        else:
            info["nvidia_smi"] = None
        probe = (
            "import json, sys\n"
            "out = {'python': sys.version.split()[0]}\n"
            "try:\n import torch; out['torch'] = torch.__version__; out['torch_cuda'] = torch.version.cuda\n"
            " out['cuda_available'] = torch.cuda.is_available()\n"
            " out['gpu'] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None\n"
            " out['capability'] = list(torch.cuda.get_device_capability(0)) if torch.cuda.is_available() else None\n"
            "except Exception as e: out['torch_error'] = repr(e)\n"
            "import importlib.metadata as md, importlib.util as iu\n"
            "for m in ('diffusers', 'transformers', 'optimum', 'optimum-onnx', 'onnx', 'tokenizers', 'huggingface_hub', 'onnxruntime-gpu'):\n"
            " try: out[m] = md.version(m)\n"
            " except Exception as e: out[m] = 'missing: ' + repr(e)\n"
            "out['optimum.exporters.onnx'] = bool(iu.find_spec('optimum.exporters.onnx'))\n"
            "try:\n import onnxruntime as ort; out['onnxruntime'] = ort.__version__; out['onnxruntime_file'] = ort.__file__\n"
            " out['ort_providers'] = ort.get_available_providers()\n"
            "except Exception as e: out['onnxruntime'] = 'missing: ' + repr(e)\n"
            "import glob, os\n"
            "out['nvidia_lib_dirs'] = sorted({d for p in sys.path for d in glob.glob(os.path.join(p, 'nvidia', '*', 'lib'))})\n"
            "print(json.dumps(out))\n"
        )
        r = subprocess.run([self.python, "-c", probe], capture_output=True, text=True, env=self.env, timeout=120)
        if r.returncode != 0:
            raise StepError(f"python probe failed: {r.stderr[-800:]}")
        py = last_json(r.stdout)
        info["python_packages"] = py
        rec.update(info)
        v = subprocess.run([self.bin, "--version"], capture_output=True, text=True, timeout=30)
        info["anyaccel_version"] = (v.stdout or v.stderr).strip()
        if not self.dry and not py.get("cuda_available"):
            raise StepError("torch sees no CUDA GPU")
        for m in ("diffusers", "optimum", "optimum-onnx", "onnx"):
            if str(py.get(m, "")).startswith("missing"):
                raise StepError(f"python package {m} is missing: {py[m]}")
        if not py.get("optimum.exporters.onnx"):
            raise StepError("optimum.exporters.onnx cannot be found (optimum-onnx)")
        # which library setting lets anyaccel start on the device: as is (its own
        # loader finds the nvidia-* wheels), else with the wheels' folders on
        # LD_LIBRARY_PATH (cuDNN is dlopen'ed by the provider, not a DT_NEEDED)
        # Both are tried and recorded; every later step (Python's onnxruntime-gpu in
        # `anyaccel compile`'s CUDA check too) runs with the wheels' folders on the path.
        tries = [("as is", {})]
        if not self.dry:
            lib_dirs = list(py.get("nvidia_lib_dirs", []))
            ort_lib = self.env.get("ANYACCEL_ORT_LIB")
            if ort_lib:
                lib_dirs.append(str(Path(ort_lib).parent))
            ld = os.pathsep.join(lib_dirs + ([os.environ["LD_LIBRARY_PATH"]] if os.environ.get("LD_LIBRARY_PATH") else []))
            tries.append(("LD_LIBRARY_PATH=nvidia wheels", {"LD_LIBRARY_PATH": ld}))
        info["anyaccel_device_probe"] = []
        rec.update(info)
        chosen = None
        for label, extra in tries:
            env = {**self.env, **extra}
            try:
                self.run(f"probe-{len(info['anyaccel_device_probe'])}", [
                    self.bin, "generate", "--model", FIXTURES / "tiny-sd15", "--device", self.plan.device,
                    "--prompt", "probe", "--steps", "2", "--size", "64x64", "--seed", "1", "--c2pa", "off",
                    "--out", self.work / "probe"], timeout=min(180, self.cap("env")), env=env)
                info["anyaccel_device_probe"].append({"setting": label, "ok": True})
                chosen = chosen or (label, extra)
            except StepError as e:
                info["anyaccel_device_probe"].append({"setting": label, "ok": False, "error": str(e)[-1500:]})
        if chosen is None:
            raise StepError(f"anyaccel --device {self.plan.device} does not start: {info['anyaccel_device_probe']}")
        self.env.update(tries[-1][1] if info["anyaccel_device_probe"][-1]["ok"] else chosen[1])
        info["anyaccel_library_setting"] = chosen[0]
        info["later_steps_library_setting"] = tries[-1][0] if info["anyaccel_device_probe"][-1]["ok"] else chosen[0]
        return info

    # build -----------------------------------------------------------------

    def s_build(self, rec):
        models = self.work / "models"
        models.mkdir(exist_ok=True)
        self.models["tiny-sd15"] = FIXTURES / "tiny-sd15-diffusers"
        self.models["tiny-sdxl"] = FIXTURES / "tiny-sdxl-diffusers"
        built = {}
        wanted = [("tiny-sd2", "sd2-tiny")]
        if not self.dry:
            wanted += [(f"{b}-sized", b) for b in self.big]
        for name, kind in wanted:
            dst = models / name
            if (dst / "model_index.json").is_file() and self.args.reuse:
                built[name] = {"reused": str(dst)}
            else:
                r = self.run(f"build-{name}", [self.python, "-m", "gpu_check.models", kind, dst],
                             timeout=self.cap("build_sdxl" if kind == "sdxl" else "build"))
                built[name] = last_json(r.stdout)
            self.models[name] = dst
        if self.dry:
            # the dry run's "big" models are the tiny fixtures themselves
            for b in self.big:
                self.models[f"{b}-sized"] = FIXTURES / ("tiny-sdxl-diffusers" if b == "sdxl" else "tiny-sd15-diffusers")
                built[f"{b}-sized"] = {"stand_in": str(self.models[f"{b}-sized"])}
        return {"models": {k: str(v) for k, v in self.models.items()}, "built": built}

    # compile ---------------------------------------------------------------

    def compile_cmd(self, name: str):
        out = self.work / "artifacts" / name
        argv = [self.bin, "compile", "--model", self.models[name], "--target", self.plan.target,
                "--out", out, "--force", "--python", self.python]
        if self.dry:
            argv.append("--no-validate")
        return argv, out

    def start_compile_big(self):
        """The big models compile one after another in a background thread."""
        names = [f"{b}-sized" for b in self.big if f"{b}-sized" in self.models]
        job = {"names": names, "done": threading.Event(), "results": {}, "started": time.time()}

        def work():
            for name in names:
                t = time.time()
                try:
                    argv, out = self.compile_cmd(name)
                    cap = self.plan.caps["compile_big_sdxl" if name.startswith("sdxl") else "compile_big"]
                    # leave the timings their time: torch's (~30 s) and anyaccel's (~90 s)
                    self.run(f"compile-{name}", argv, timeout=max(30, min(cap, self.remaining() - 120)))
                    self.artifacts[name] = out
                    job["results"][name] = {"ok": True, "seconds": round(time.time() - t, 1),
                                            "manifest": _manifest_summary(out)}
                except Exception as e:  # noqa: BLE001
                    job["results"][name] = {"ok": False, "error": str(e), "seconds": round(time.time() - t, 1)}
            job["done"].set()

        threading.Thread(target=work, daemon=True).start()
        self.bg["compile_big"] = job

    def s_compile(self, rec):
        self.start_compile_big()
        results = {}
        for name in ("tiny-sd15", "tiny-sd2", "tiny-sdxl"):
            if self.dry and name != "tiny-sd2":
                # optimum's fp32 exports of exactly these weights are committed
                self.artifacts[name] = FIXTURES / name
                results[name] = {"fixture": str(self.artifacts[name])}
                continue
            t = time.time()
            argv, out = self.compile_cmd(name)
            self.run(f"compile-{name}", argv, timeout=self.cap("compile"))
            self.artifacts[name] = out
            results[name] = {"seconds": round(time.time() - t, 1), "manifest": _manifest_summary(out)}
        return {"target": self.plan.target, "tiny": results}

    # images ----------------------------------------------------------------

    def s_images(self, rec):
        import numpy as np
        from PIL import Image

        cases = []
        for name in ("tiny-sd15", "tiny-sd2", "tiny-sdxl"):
            cases.append({"name": name, "model": str(self.models[name]), "prompt": PROMPT,
                          "negative_prompt": None, "seed": 42, "steps": self.plan.tiny_steps,
                          "guidance": 7.5, "size": [64, 64]})
        spec = {"device": self.plan.device, "dtype": self.plan.dtype, "out_dir": str(self.work / "refs"),
                "cases": cases, "threads": 2 if self.dry else None}
        spec_path = self.work / "refs-spec.json"
        spec_path.write_text(json.dumps(spec))
        out_path = self.work / "refs.json"
        self.run("refs", [self.python, "-m", "gpu_check.torch_worker", "refs", spec_path, out_path],
                 timeout=self.cap("images"))
        refs = json.loads(out_path.read_text())
        cmp = {}
        for case in cases:
            name = case["name"]
            gen_dir = self.work / "anyaccel-images" / name
            shutil.rmtree(gen_dir, ignore_errors=True)
            r = self.run(f"generate-{name}", [
                self.bin, "generate", "--model", self.artifacts[name], "--device", self.plan.device,
                "--prompt", case["prompt"], "--steps", case["steps"], "--guidance", case["guidance"],
                "--seed", case["seed"], "--size", "64x64", "--scheduler", "euler", "--c2pa", "off",
                "--out", gen_dir], timeout=min(120, self.cap("images")))
            pngs = sorted(gen_dir.glob("*.png"))
            if not pngs:
                raise StepError(f"anyaccel generate wrote no image for {name}: {r.stdout[-300:]}")
            ours = np.asarray(Image.open(pngs[0]).convert("RGB")).astype(np.int16)
            ref = refs["cases"].get(name, {})
            entry = {"anyaccel_png": str(pngs[0]), "black_or_flat": image_is_flat(ours),
                     "anyaccel_std": float(ours.std())}
            self.check("images", f"{name}: anyaccel image not black/flat", not entry["black_or_flat"],
                       f"std {entry['anyaccel_std']:.2f}", "std > 1")
            if ref.get("ok"):
                theirs = np.asarray(Image.open(ref["png"]).convert("RGB")).astype(np.int16)
                entry.update(compare(ours, theirs))
                entry["reference_nan_latents"] = ref["nan_latents"]
                entry["reference_png"] = ref["png"]
                self.check("images", f"{name}: max |anyaccel - diffusers| pixel", entry["max_abs"] <= TOLERANCE,
                           entry["max_abs"], f"<= {TOLERANCE}",
                           f"mean {entry['mean_abs']:.3f}, PSNR {entry['psnr_db']:.1f} dB")
            else:
                entry["reference_error"] = ref.get("error", "no reference")
                self.check("images", f"{name}: diffusers reference", False, entry["reference_error"], "made")
            cmp[name] = entry
        for name in ("tiny-sd15", "tiny-sdxl"):
            cmp[name]["sidecar"] = self.sidecar_image(name, cases, refs)
        return {"reference": {k: refs.get(k) for k in ("device", "dtype", "vae_dtype", "torch")},
                "cases": cmp}

    def sidecar_image(self, name: str, cases: list, refs: dict) -> dict:
        """The torch sidecar (`--executor remote`) on the diffusers weights, the GPU
        fallback: its image against the same diffusers reference. Its VAE decodes in
        the model's dtype (fp16 for SD 1.5 on CUDA, SDXL upcasts), the reference in fp32."""
        import numpy as np
        from PIL import Image

        case = next(c for c in cases if c["name"] == name)
        gen_dir = self.work / "sidecar-images" / name
        shutil.rmtree(gen_dir, ignore_errors=True)
        self.run(f"sidecar-{name}", [
            self.bin, "generate", "--executor", "remote", "--python", self.python, "--model", case["model"],
            "--device", self.plan.device, "--prompt", case["prompt"], "--steps", case["steps"],
            "--guidance", case["guidance"], "--seed", case["seed"], "--size", "64x64", "--scheduler", "euler",
            "--c2pa", "off", "--out", gen_dir], timeout=min(150, self.cap("images")))
        pngs = sorted(gen_dir.glob("*.png"))
        if not pngs:
            raise StepError(f"the torch sidecar wrote no image for {name}")
        ours = np.asarray(Image.open(pngs[0]).convert("RGB")).astype(np.int16)
        entry = {"png": str(pngs[0])}
        ref = refs["cases"].get(name, {})
        if ref.get("ok"):
            theirs = np.asarray(Image.open(ref["png"]).convert("RGB")).astype(np.int16)
            entry.update(compare(ours, theirs))
            self.check("images", f"{name}: max |torch sidecar - diffusers| pixel", entry["max_abs"] <= TOLERANCE,
                       entry["max_abs"], f"<= {TOLERANCE}", f"mean {entry['mean_abs']:.3f}")
        return entry

    # torch timing ----------------------------------------------------------

    def start_torch_bench(self, big: str):
        w, h = self.plan.sdxl_size if big == "sdxl" else self.plan.big_size
        steps = self.plan.sdxl_steps if big == "sdxl" else self.plan.big_steps
        go = self.work / f"go-{big}"
        go.unlink(missing_ok=True)
        spec = {"device": self.plan.device, "dtype": self.plan.dtype, "model": str(self.models[f"{big}-sized"]),
                "case": {"prompt": PROMPT, "steps": steps, "guidance": 7.5, "size": [w, h], "seed": 42},
                "reps": self.plan.reps, "batches": self.plan.batches if big == "sd15" else [],
                "turbo": big == "sd15", "channels_last": not self.dry,
                # torch.compile on SDXL would not fit the budget as well; SD 1.5 is the goal's comparison
                "compile": self.plan.compile if big == "sd15" else None,
                "go_file": str(go), "go_timeout_s": self.plan.caps["compile_big_sdxl"] + 120,
                "threads": 2 if self.dry else None}
        spec_path = self.work / f"torch-bench-{big}.json"
        spec_path.write_text(json.dumps(spec))
        out = self.work / f"torch-bench-{big}-result.json"
        out.unlink(missing_ok=True)
        proc, log = self.spawn(f"torch-bench-{big}",
                               [self.python, "-m", "gpu_check.torch_worker", "bench", spec_path, out])
        self.bg[f"torch-{big}"] = {"proc": proc, "log": log, "out": out, "go": go, "spec": spec,
                                   "started": time.time()}

    def s_torch_timing(self, rec):
        got = {}
        errors = []
        for big in self.big:
            job = self.bg.get(f"torch-{big}")
            if job is None:
                continue
            job["go"].write_text("go\n")  # the big compile has finished (or failed): the machine is quiet
            try:
                rc = job["proc"].wait(timeout=self.cap("torch_timing"))
            except subprocess.TimeoutExpired:
                _kill(job["proc"])
                job["proc"].wait()
                rc = "timeout"
            self._tail(f"torch-bench-{big}", job["log"])
            if rc != 0 or not job["out"].is_file():
                errors.append(f"{big}: worker {rc}: {self._last(job['log'], 6)}")
                continue
            got[big] = json.loads(job["out"].read_text())
            got[big]["wall_s"] = round(time.time() - job["started"], 1)
        if errors:
            raise StepError("; ".join(errors))
        return {"models": got}

    def s_compile_big(self, rec):
        job = self.bg.get("compile_big")
        if job is None:
            raise StepError("the background compile never started")
        if not job["done"].wait(timeout=self.cap("compile_big")):
            raise StepError(f"the big compile is still running after {time.time() - job['started']:.0f}s")
        bad = {k: v for k, v in job["results"].items() if not v.get("ok")}
        if bad:
            raise StepError(f"compile failed: {bad}")
        return {"target": self.plan.target, "models": job["results"],
                "wall_s": round(time.time() - job["started"], 1)}

    # anyaccel timing -------------------------------------------------------

    def s_anyaccel_timing(self, rec):
        got = {}
        errors = []
        for big in self.big:
            name = f"{big}-sized"
            if name not in self.artifacts:
                errors.append(f"{name}: not compiled")
                continue
            variants = ["onnx"] + (["graphs", "sidecar"] if big == "sd15" else [])
            for variant in variants:
                label = big if variant == "onnx" else f"{big}_{variant}"
                # the sidecar's warm-up compiles (minutes on a GPU; eager and quick in a dry run)
                need = {"onnx": 0, "graphs": 120, "sidecar": 60 if self.dry else 180}[variant]
                if self.remaining() < need:
                    # An extra measurement, not a check: keep the time for the report.
                    got[label] = {"skipped": f"{self.remaining():.0f} s left, under {need} s"}
                    continue
                try:
                    got[label] = self.serve_and_bench(big, self.artifacts[name], variant)
                except Exception as e:  # noqa: BLE001
                    with open(self.log_path, "a") as f:
                        f.write(traceback.format_exc())
                    if variant == "onnx":
                        errors.append(f"{label}: {e}")
                    else:
                        # the extra servers are measurements: their failure is reported, not fatal
                        got[label] = {"variant": variant, "failed": str(e)[-500:].replace("|", "/")}
                if variant == "graphs" and not self.dry and "skipped" not in got[label]:
                    # --cuda-graphs is a feature, not only a measurement: it must serve
                    self.check("anyaccel_timing", f"{big}: served with --cuda-graphs", "failed" not in got[label],
                               got[label].get("failed", "ok"), "serves")
        if errors:
            rec["models"] = got
            raise StepError("; ".join(errors))
        return {"models": got}

    def serve_and_bench(self, big: str, artifact: Path, variant: str = "onnx") -> dict:
        """One server, `anyaccel bench` at each level. Besides the ONNX server (`onnx`),
        at batch 1 and 1 step only (the latency goals): `graphs`, the denoiser captured
        as CUDA graphs (a dry run starts it without the flag: the CPU has none), and
        `sidecar`, the torch sidecar on the same diffusers weights with torch.compile
        in reduce-overhead mode (a dry run leaves it eager: compiling costs CI minutes)."""
        w, h = self.plan.sdxl_size if big == "sdxl" else self.plan.big_size
        steps = self.plan.sdxl_steps if big == "sdxl" else self.plan.big_steps
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        graphs = variant == "graphs" and not self.dry
        max_batch = max([1] + self.plan.batches) if big == "sd15" and variant == "onnx" else 1
        model = self.models[f"{big}-sized"] if variant == "sidecar" else artifact
        argv = [self.bin, "serve", "--model", model, "--device", self.plan.device, "--host", "127.0.0.1",
                "--port", port, "--sizes", f"{w}x{h}", "--max-batch", max_batch, "--max-images", max_batch,
                "--batch-delay-ms", "0", "--c2pa", "off"]
        if graphs:
            argv += ["--cuda-graphs", "4"]
        if variant == "sidecar":
            argv += ["--executor", "remote", "--python", self.python,
                     "--sidecar-compile", "off" if self.dry else "reduce-overhead"]
        name = f"serve-{big}" + ("" if variant == "onnx" else f"-{variant}")
        sampler = MemorySampler(self.dry)
        base = sampler.total_used()
        proc, log = self.spawn(name, argv)
        result = {"url": url, "server_argv": " ".join(map(str, argv)), "gpu_memory_used_before_bytes": base,
                  "variant": variant, "cuda_graphs": graphs}
        if variant == "sidecar":
            result["memory_note"] = "the sampler reads the anyaccel process; the model is in its sidecar child"
        try:
            t = time.time()
            wait_ready(url, proc, timeout=min(300, self.cap("anyaccel_timing")))
            result["load_s"] = round(time.time() - t, 2)
            with urllib.request.urlopen(url + "/info", timeout=10) as r:
                info = json.loads(r.read())
            # what the server says it runs (binding mode, CUDA graphs, the sidecar's torch.compile)
            result["runtime"] = info.get("runtime")
            result["device_memory_after_warmup"] = info.get("device_memory")
            sampler.start(proc.pid)
            levels = [("b1", 1, steps, 7.5)]
            if big == "sd15":
                levels.append(("turbo", 1, 1, 0.0))
                if variant == "onnx":
                    levels += [(f"b{n}", n, steps, 7.5) for n in self.plan.batches]
            for label, n, st, g in levels:
                out = self.work / f"bench-{name}-{label}"
                shutil.rmtree(out, ignore_errors=True)
                self.run(f"bench-{name}-{label}", [
                    self.bin, "bench", "--url", url, "--concurrency", "1", "--duration", self.plan.bench_secs,
                    "--size", f"{w}x{h}", "--steps", st, "--n", n, "--guidance-scale", g, "--scheduler", "euler",
                    "--prompt", PROMPT, "--warmup", "1", "--pause", "0", "--timeout", "300",
                    "--pool", f"check-{big}", "--instance-type", "h200" if not self.dry else "cpu",
                    "--accelerator", "nvidia" if not self.dry else "cpu",
                    "--no-plots", "--no-progress", "--quiet", "--out", out],
                    timeout=min(self.plan.bench_secs * 4 + 180, self.cap("anyaccel_timing")))
                level = json.loads((out / "result.json").read_text())["levels"][0]
                lat = level.get("latency_s") or {}
                inf = level.get("server_inference_time_s") or {}
                entry = {"images": n, "steps": st, "guidance": g, "requests": level.get("requests"),
                         "ok": level.get("ok"), "errors_by_status": level.get("errors_by_status"),
                         "p50_s": lat.get("p50"), "p95_s": lat.get("p95"), "mean_s": lat.get("mean"),
                         "server_inference_p50_s": inf.get("p50"),
                         "images_per_s": level.get("throughput_images_per_s")}
                if not level.get("ok"):
                    raise StepError(f"bench {label}: no request succeeded ({level.get('errors_by_status')})")
                if label == "b1":
                    entry["memory"] = sampler.peak()
                result[label] = entry
                self.log(f"anyaccel {name} {label}: p50 {entry['p50_s']}s, {entry['images_per_s']} images/s")
            result["memory_after_all_levels"] = sampler.peak()
        finally:
            sampler.stop()
            _kill(proc)
            proc.wait()
            self._tail(name, log, lines=30)
        return result

    # report ----------------------------------------------------------------

    def s_report(self, rec):
        self.results["goals"] = goals(self.results, self.dry)
        sheet = contact_sheet(_get(self.results, "steps", "images", "cases") or {},
                              self.out / "gpu-check-images.png")
        md = markdown(self.results)
        (self.out / "gpu-check.md").write_text(md)
        return {"markdown": str(self.out / "gpu-check.md"), "images": sheet}

    # -- the run

    def kill_all(self) -> None:
        """Its own process groups outlive this process otherwise (a new session each)."""
        for proc in self.procs:
            if proc.poll() is None:
                _kill(proc)

    def main(self) -> int:
        def on_signal(signum, _frame):
            self.kill_all()
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, on_signal)
        try:
            return self._main()
        finally:
            self.kill_all()

    def _main(self) -> int:
        self.log(f"mode {self.results['mode']}, budget {self.args.budget}s, out {self.out}, work {self.work}")
        self.step("env", self.s_env)
        self.step("build", self.s_build, needs=("env",))
        # the PyTorch side warms up (and torch.compile compiles) while the models compile
        if self.results["steps"]["build"].get("status") == "ok":
            for big in self.big:
                self.start_torch_bench(big)
        self.step("compile", self.s_compile, needs=("build",))
        self.step("images", self.s_images, needs=("compile",))
        self.step("compile_big", self.s_compile_big, needs=("build",))
        self.step("torch_timing", self.s_torch_timing, needs=("build",))
        self.step("anyaccel_timing", self.s_anyaccel_timing, needs=("compile_big",))
        self.kill_all()
        self.step("report", self.s_report)
        self.results["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.results["ok"] = not self.results["failed_steps"]
        self.save()
        if self.results["steps"]["report"]["status"] == "ok":
            print((self.out / "gpu-check.md").read_text())
        if self.results["failed_steps"]:
            self.log(f"FAILED step(s): {', '.join(self.results['failed_steps'])}")
            for name in self.results["failed_steps"]:
                self.log(f"  {name}: {self.results['steps'][name].get('error')}")
            return 1
        self.log(f"all steps passed in {time.time() - self.started:.0f}s")
        return 0


# ---------------------------------------------------------------------------
# helpers


def last_json(text: str) -> dict:
    """The last line of a command's output that is a JSON object."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return {}


def _manifest_summary(out: Path) -> dict:
    try:
        m = json.loads((out / "anyaccel-manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: m.get(k) for k in ("target", "dtype", "family", "bytes") if k in m}


def image_is_flat(img) -> bool:
    """Black, NaN-decoded (which PNGs carry as 0) or one flat colour."""
    return bool(img.max() == 0 or img.std() <= 1.0)


def compare(a, b) -> dict:
    import numpy as np

    if a.shape != b.shape:
        return {"max_abs": 255, "mean_abs": 255.0, "psnr_db": 0.0, "shape_mismatch": [a.shape, b.shape]}
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    mse = float((d.astype(np.float64) ** 2).mean())
    return {"max_abs": int(d.max()), "mean_abs": float(d.mean()),
            "psnr_db": float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse)),
            "pixels_over_tolerance": int((d > TOLERANCE).any(axis=-1).sum())}


def contact_sheet(cases: dict, path: Path):
    """One PNG: per tiny model, anyaccel's image, diffusers' and their difference x32."""
    import numpy as np
    from PIL import Image

    rows = []
    for name, c in sorted(cases.items()):
        try:
            ours = np.asarray(Image.open(c["anyaccel_png"]).convert("RGB")).astype(np.int16)
            ref_png = Path(c.get("reference_png") or "/nonexistent")
            theirs = np.asarray(Image.open(ref_png).convert("RGB")).astype(np.int16) if ref_png.is_file() else ours * 0
        except (OSError, KeyError):
            continue
        if ours.shape != theirs.shape:
            continue
        diff = np.clip(np.abs(ours - theirs) * 32, 0, 255)
        rows.append(np.concatenate([ours, theirs, diff], axis=1))
    if not rows:
        return None
    sheet = np.concatenate(rows, axis=0).astype(np.uint8)
    Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.NEAREST).save(path)
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    t = time.time()
    while time.time() - t < timeout:
        if proc.poll() is not None:
            raise StepError(f"anyaccel serve exited ({proc.returncode}) before it was ready")
        try:
            with urllib.request.urlopen(url + "/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise StepError(f"anyaccel serve not ready after {timeout:.0f}s")


class MemorySampler:
    """Peak device memory of one process (nvidia-smi's per-process figure, and the
    GPU's total used), or its peak resident set on a CPU run, sampled every 0.2 s."""

    def __init__(self, cpu: bool):
        self.cpu = cpu
        self.smi = shutil.which("nvidia-smi")
        self.pid = None
        self.max_proc = None
        self.max_total = None
        self._stop = threading.Event()
        self._thread = None

    def total_used(self):
        if self.cpu or not self.smi:
            return None
        try:
            r = subprocess.run([self.smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True, timeout=10)
            return int(r.stdout.split()[0]) * 2**20
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None

    def proc_used(self):
        if self.cpu:
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
            except OSError:
                return None
            return None
        if not self.smi:
            return None
        try:
            r = subprocess.run([self.smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True, timeout=10)
            for line in r.stdout.splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) == 2 and parts[0] == str(self.pid):
                    return int(parts[1]) * 2**20
        except (OSError, ValueError, subprocess.SubprocessError):
            return None
        return None

    def _loop(self):
        while not self._stop.is_set():
            for attr, fn in (("max_proc", self.proc_used), ("max_total", self.total_used)):
                v = fn()
                if v is not None:
                    setattr(self, attr, max(v, getattr(self, attr) or 0))
            self._stop.wait(0.2)

    def start(self, pid: int):
        self.pid = pid
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def peak(self) -> dict:
        return {"source": "VmHWM (CPU run)" if self.cpu else "nvidia-smi", "process_peak_bytes": self.max_proc,
                "gpu_total_used_peak_bytes": self.max_total}

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)


def _get(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def goals(results: dict, dry: bool) -> list:
    """Issue 16's performance goals against what was measured (a dry run's numbers are
    the CPU's and meet nothing; they are computed to test this code)."""
    steps = results["steps"]
    ours = _get(steps, "anyaccel_timing", "models") or {}
    torch_ = _get(steps, "torch_timing", "models") or {}
    out = []

    def goal(name, value, target, met, unit=""):
        out.append({"goal": name, "measured": value, "target": target, "unit": unit,
                    "met": None if value is None else bool(met), "dry_run": dry})

    b1 = _get(ours, "sd15", "b1", "p50_s")
    goal("SD 1.5 512x512, 50 steps, CFG, batch 1: anyaccel latency", b1, "<= 0.45", b1 is not None and b1 <= 0.45, "s")
    comp = _get(torch_, "sd15", "cases", "compiled_b1", "median_s")
    ratio = comp / b1 if comp and b1 else None
    goal("SD 1.5 batch 1: diffusers + torch.compile time / anyaccel time", ratio, ">= 1.3",
         ratio is not None and ratio >= 1.3, "x")
    eager = _get(torch_, "sd15", "cases", "eager_b1", "median_s")
    r2 = eager / b1 if eager and b1 else None
    goal(f"SD 1.5 batch 1: diffusers {'fp32' if dry else 'fp16'} (SDPA) time / anyaccel time", r2, "reported", r2 is not None, "x")
    sdxl = _get(ours, "sdxl", "b1", "p50_s")
    goal("SDXL 1024x1024, 30 steps, CFG, batch 1: anyaccel latency", sdxl, "<= 1.3", sdxl is not None and sdxl <= 1.3, "s")
    turbo = _get(ours, "sd15", "turbo", "p50_s")
    goal("SD-Turbo-sized 512x512, 1 step, no CFG: anyaccel latency", turbo, "<= 0.030",
         turbo is not None and turbo <= 0.030, "s")
    # Distinct names in a dry run too: the CPU server runs without the flag.
    graphs = " with --cuda-graphs" + (" (off on the CPU)" if dry else "")
    b1g = _get(ours, "sd15_graphs", "b1", "p50_s")
    goal(f"SD 1.5 512x512, 50 steps, CFG, batch 1{graphs}: anyaccel latency", b1g, "<= 0.45",
         b1g is not None and b1g <= 0.45, "s")
    tg = _get(ours, "sd15_graphs", "turbo", "p50_s")
    goal(f"SD-Turbo-sized 512x512, 1 step{graphs}: anyaccel latency", tg, "<= 0.030",
         tg is not None and tg <= 0.030, "s")
    side = _get(ours, "sd15_sidecar", "b1", "p50_s")
    r3 = side / b1 if side and b1 else None
    goal(f"SD 1.5 batch 1: torch sidecar ({'eager' if dry else 'torch.compile reduce-overhead'}) time / anyaccel ONNX time",
         r3, "reported", r3 is not None, "x")
    mem = _get(ours, "sd15", "b1", "memory", "process_peak_bytes")
    goal("SD 1.5 batch 1: anyaccel server's device memory" + (" (peak RSS on the CPU)" if dry else ""),
         None if mem is None else round(mem / GOALS_GB, 3), "<= 5", mem is not None and mem <= 5 * GOALS_GB, "GB")
    for n in (4, 8):
        ips = _get(ours, "sd15", f"b{n}", "images_per_s")
        goal(f"SD 1.5 batch {n}: anyaccel throughput", ips, "reported", ips is not None, "images/s")
        tps = _get(torch_, "sd15", "cases", f"eager_b{n}", "images_per_s")
        goal(f"SD 1.5 batch {n}: diffusers {'fp32' if dry else 'fp16'} throughput", tps, "reported", tps is not None, "images/s")
    return out


def _fmt(v, unit=""):
    if v is None:
        return "–"
    if isinstance(v, float):
        s = f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    else:
        s = str(v)
    return f"{s} {unit}".strip()


def markdown(r: dict) -> str:
    lines = [f"# GPU check ({r['mode']})", "",
             f"Started {r['started_at']}, budget {r['budget_s']} s, big models: {', '.join(r['big_models']) or 'none'}.", ""]
    env = _get(r, "steps", "env") or {}
    py = env.get("python_packages") or {}
    lines += [f"- GPU: {env.get('nvidia_smi') or py.get('gpu') or 'none'}",
              f"- torch {py.get('torch')} (CUDA {py.get('torch_cuda')}), diffusers {py.get('diffusers')}, "
              f"onnxruntime {py.get('onnxruntime')} {py.get('ort_providers')}",
              f"- anyaccel: {env.get('anyaccel_version')}; library setting: {env.get('anyaccel_library_setting')}", ""]
    lines += ["## Steps", "", "| step | status | s | note |", "|---|---|---:|---|"]
    for name in STEPS:
        s = r["steps"].get(name, {"status": "not run"})
        if name == "report" and s["status"] == "running":
            s = {**s, "status": "ok"}
        note = s.get("error") or s.get("reason") or ""
        lines.append(f"| {name} | {s['status']} | {_fmt(s.get('seconds'))} | {str(note)[:160].replace('|', '/')} |")
    lines += ["", "## Checks", "", "| check | value | limit | ok | note |", "|---|---|---|---|---|"]
    for c in r["checks"]:
        lines.append(f"| {c['name']} | {_fmt(c['value'])} | {c['limit']} | {'✓' if c['ok'] else '✗'} | {c['note']} |")
    lines += ["", "## Timings", "", "| engine | model | case | s (median / p50) | images/s | memory |",
              "|---|---|---|---:|---:|---|"]
    for big, m in (_get(r, "steps", "torch_timing", "models") or {}).items():
        for case, c in m.get("cases", {}).items():
            mem = c.get("max_memory_allocated_bytes")
            lines.append(f"| diffusers {m.get('dtype')} {'torch.compile' if case.startswith('compiled') else 'SDPA'} "
                         f"| {big} | {case} ({c['steps']} steps, n={c['images']}) | {_fmt(c['median_s'])} | "
                         f"{_fmt(c['images_per_s'])} | {_fmt(None if mem is None else round(mem / 1e9, 3), 'GB alloc')} |")
    for big, m in (_get(r, "steps", "anyaccel_timing", "models") or {}).items():
        engine = "anyaccel serve + bench" + {"graphs": " (--cuda-graphs)" if m.get("cuda_graphs") else "",
                                             "sidecar": " (torch sidecar)"}.get(m.get("variant"), "")
        for why in ("skipped", "failed"):
            if m.get(why):
                lines.append(f"| {engine} | {big} | {why}: {m[why]} | | | |")
        for case in ("b1", "turbo", "b4", "b8"):
            c = m.get(case)
            if not c:
                continue
            mem = _get(c, "memory", "process_peak_bytes")
            lines.append(f"| {engine} | {big} | {case} ({c['steps']} steps, n={c['images']}) | "
                         f"{_fmt(c['p50_s'])} (server {_fmt(c['server_inference_p50_s'])}) | {_fmt(c['images_per_s'])} | "
                         f"{_fmt(None if mem is None else round(mem / 1e9, 3), 'GB')} |")
    servers = [(big, m["runtime"]) for big, m in (_get(r, "steps", "anyaccel_timing", "models") or {}).items()
               if m.get("runtime")]
    if servers:
        lines += ["", "Each anyaccel server's `/info` `runtime`:", ""] + [f"- {big}: {rt}" for big, rt in servers]
    lines += ["", "## Goals" + (" (dry run: CPU numbers, not the goals' hardware)" if r["mode"] != "gpu" else ""), "",
              "| goal | measured | target | met |", "|---|---:|---|---|"]
    for g in r["goals"]:
        met = "–" if g["met"] is None else ("✓" if g["met"] else "✗")
        if g.get("dry_run"):
            met += " (dry run)"
        lines.append(f"| {g['goal']} | {_fmt(g['measured'], g['unit'])} | {g['target']} | {met} |")
    lines += ["", f"Failed steps: {', '.join(r['failed_steps']) or 'none'}.", ""]
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for gpu-check.json, gpu-check.md, gpu-check.log")
    ap.add_argument("--work", help="scratch folder for models and artifacts (default /tmp/gpu-check-work; "
                                   "dry run: OUT/work)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny fixtures, few steps")
    ap.add_argument("--bin", required=True, help="the anyaccel binary")
    ap.add_argument("--python", help="Python with torch, diffusers, optimum (default: this one)")
    ap.add_argument("--ort-lib", help="libonnxruntime.so for anyaccel (the CUDA build on a GPU)")
    ap.add_argument("--big", default="sd15", help="big random-weight models: sd15, sdxl or sd15,sdxl ('' for none)")
    ap.add_argument("--budget", type=float, default=480, help="seconds for the whole run (default 480)")
    ap.add_argument("--reuse", action="store_true", help="reuse built models left in --work")
    ap.add_argument("--break", dest="break_step", help="make these steps fail (comma-separated; for the tests)")
    args = ap.parse_args(argv)
    for b in filter(None, args.big.split(",")):
        if b not in ("sd15", "sdxl"):
            ap.error(f"--big: unknown model {b!r} (sd15, sdxl)")
    return args


def main(argv=None) -> int:
    return Check(parse_args(argv)).main()


if __name__ == "__main__":
    sys.exit(main())
