//! `anyaccel compile`: turns a diffusers model (a local folder or a Hub id) into
//! the artifact one accelerator serves, with its `anyaccel-manifest.json`, and
//! optionally pushes it to a Hub repo.
//!
//! The exporters are Python (optimum's ONNX exporter, optimum-neuron's
//! compiler), so this prepares a Python environment for the target (a venv
//! with the repo's pinned requirements, embedded in the binary) and runs the
//! embedded `python/anyaccel_sidecar/compile.py` in it. `--python` skips the
//! preparation and uses an existing interpreter as is (e.g. the Neuron DLAMI's).
//! This is what the compile Job of a deployment runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyaccel_pipeline::CompileTarget;
use anyhow::{Context, bail};
use clap::Args;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

/// The export script and the pinned environments, embedded so the binary
/// works outside the repository (in a container, a Kubernetes Job).
const COMPILE_PY: &str = include_str!("../../../python/anyaccel_sidecar/compile.py");
const REQ_CPU: &str = include_str!("../../../python/requirements-cpu.txt");
const REQ_EXPORT_ONNX: &str = include_str!("../../../python/requirements-export-onnx.txt");
const REQ_NEURON: &str = include_str!("../../../python/requirements-neuron.txt");

/// Written into a prepared venv: the requirement texts it was installed from.
const STAMP: &str = ".anyaccel-compile-env";

/// `--target`: the names are [`CompileTarget`]'s; the help of each is here.
fn target_parser() -> impl TypedValueParser<Value = CompileTarget> {
    PossibleValuesParser::new(
        CompileTarget::ALL.map(|t| PossibleValue::new(t.as_str()).help(target_help(t))),
    )
    .map(|name| CompileTarget::parse(&name).expect("a listed target name"))
}

fn target_help(target: CompileTarget) -> &'static str {
    match target {
        CompileTarget::OnnxFp32 => {
            "ONNX, fp32: the CPU artifact (any batch and size), UNet fused for the CPU kernels"
        }
        CompileTarget::OnnxInt8 => {
            "onnx-fp32 with int8 UNet MatMul weights: faster on CPUs, slightly different images"
        }
        CompileTarget::OnnxOpenVino => {
            "ONNX, fp32, as exported: for `--device openvino` (x86_64 CPUs)"
        }
        CompileTarget::OnnxFp16 => {
            "ONNX, fp16: the CUDA artifact (GPU-fused, VAE fp32); builds on any machine"
        }
        CompileTarget::Neuron => {
            "optimum-neuron compiled components for inf2/trn1 (static batch and size)"
        }
    }
}

/// Name of the prepared environment (the ONNX targets share one).
fn env_name(target: CompileTarget) -> &'static str {
    match target {
        CompileTarget::OnnxFp32
        | CompileTarget::OnnxInt8
        | CompileTarget::OnnxOpenVino
        | CompileTarget::OnnxFp16 => "onnx",
        CompileTarget::Neuron => "neuron",
    }
}

/// Requirement files (name, text); the first is the one to install.
fn requirements(target: CompileTarget) -> Vec<(&'static str, &'static str)> {
    match target {
        CompileTarget::OnnxFp32
        | CompileTarget::OnnxInt8
        | CompileTarget::OnnxOpenVino
        | CompileTarget::OnnxFp16 => vec![
            ("requirements-export-onnx.txt", REQ_EXPORT_ONNX),
            ("requirements-cpu.txt", REQ_CPU),
        ],
        CompileTarget::Neuron => vec![("requirements-neuron.txt", REQ_NEURON)],
    }
}

/// The ONNX locks pin every package and must skip dependency resolution
/// (see python/requirements-cpu.txt); the Neuron file resolves normally.
fn no_deps(target: CompileTarget) -> bool {
    target != CompileTarget::Neuron
}

#[derive(Args, Debug, Clone)]
pub struct CompileArgs {
    /// Diffusers Stable Diffusion model: a local folder or a Hugging Face Hub repo id.
    #[arg(long)]
    pub model: String,
    /// Hub revision (branch, tag or commit) of --model.
    #[arg(long)]
    pub revision: Option<String>,
    /// onnx-fp32 (CPU), onnx-int8 (CPU, quantized), onnx-openvino (CPU through OpenVINO),
    /// onnx-fp16 (CUDA; built on any machine) or neuron (inf2/trn1).
    #[arg(long, value_parser = target_parser())]
    pub target: CompileTarget,
    /// Output folder; must be absent or empty unless --force.
    #[arg(long)]
    pub out: PathBuf,
    /// Neuron: images per compiled batch (default 1).
    #[arg(long)]
    pub batch_size: Option<u32>,
    /// Neuron: the image size WxH compiled for (default: the model's native size).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<(u32, u32)>,
    /// Upload the artifact to this Hugging Face Hub model repo (needs HF_TOKEN).
    #[arg(long, value_name = "REPO")]
    pub push: Option<String>,
    /// Replace a non-empty --out.
    #[arg(long)]
    pub force: bool,
    /// Skip the exporter's numerical check of the exported model.
    #[arg(long)]
    pub no_validate: bool,
    /// onnx-fp32: keep optimum's UNet graph as exported (no CPU fusions).
    #[arg(long)]
    pub no_optimize: bool,
    /// Use this Python interpreter as is, installing nothing (e.g. the Neuron
    /// DLAMI's environment).
    #[arg(long, env = "ANYACCEL_COMPILE_PYTHON", conflicts_with = "venv")]
    pub python: Option<PathBuf>,
    /// Virtual environment to create or update with the target's pinned
    /// requirements (default: ~/.cache/anyaccel/compile-venv-<onnx|neuron>).
    #[arg(long, env = "ANYACCEL_COMPILE_VENV")]
    pub venv: Option<PathBuf>,
    /// Interpreter that creates the venv (default: python3).
    #[arg(long, env = "ANYACCEL_PYTHON", default_value = "python3")]
    pub base_python: PathBuf,
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("size must be WxH, e.g. 512x512 (got `{s}`)"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| format!("`{v}` is not a number of pixels"))
    };
    let (w, h) = (parse(w)?, parse(h)?);
    if w == 0 || h == 0 || w % 8 != 0 || h % 8 != 0 {
        return Err(format!(
            "width and height must be positive multiples of 8 (got {w}x{h})"
        ));
    }
    Ok((w, h))
}

/// Checks the arguments before any environment work.
fn validate(args: &CompileArgs) -> anyhow::Result<()> {
    if args.target != CompileTarget::Neuron && (args.batch_size.is_some() || args.size.is_some()) {
        bail!(
            "--batch-size and --size apply to --target neuron; {} exports take any batch and size",
            args.target
        );
    }
    if args.no_optimize && args.target != CompileTarget::OnnxFp32 {
        bail!(
            "--no-optimize applies to --target onnx-fp32 ({} is built from the optimized graph or has its own passes)",
            args.target
        );
    }
    if args.batch_size == Some(0) {
        bail!("--batch-size must be at least 1");
    }
    if args.out.is_file() {
        bail!("--out {} is a file; expected a folder", args.out.display());
    }
    if !args.force
        && args.out.is_dir()
        && std::fs::read_dir(&args.out).is_ok_and(|mut d| d.next().is_some())
    {
        bail!(
            "--out {} is not empty; pass --force to replace it",
            args.out.display()
        );
    }
    let local = Path::new(&args.model);
    if local.exists() {
        if !local.join("model_index.json").is_file() {
            bail!(
                "{}: no model_index.json; expected a diffusers Stable Diffusion folder",
                args.model
            );
        }
    } else if args.model.starts_with(['.', '/']) || args.model.matches('/').count() != 1 {
        bail!(
            "{}: no such folder, and not a Hub repo id (owner/name)",
            args.model
        );
    }
    Ok(())
}

pub fn run(args: CompileArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let python = match &args.python {
        Some(p) => p.clone(),
        None => {
            let venv = match &args.venv {
                Some(v) => v.clone(),
                None => default_venv(args.target)?,
            };
            prepare_venv(&venv, args.target, &args.base_python)?
        }
    };
    let script = std::env::temp_dir().join(format!("anyaccel-compile-{}.py", std::process::id()));
    std::fs::write(&script, COMPILE_PY).with_context(|| format!("writing {}", script.display()))?;
    let status = export_command(&python, &script, &args).status();
    let _ = std::fs::remove_file(&script);
    let status = status.with_context(|| format!("running {}", python.display()))?;
    if !status.success() {
        bail!(
            "compiling {} for {} failed ({status}); see the output above",
            args.model,
            args.target
        );
    }
    tracing::info!(out = %args.out.display(), target = %args.target, "artifact written with anyaccel-manifest.json");
    Ok(())
}

/// The command that runs the embedded export script.
fn export_command(python: &Path, script: &Path, args: &CompileArgs) -> Command {
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .arg("--model")
        .arg(&args.model)
        .arg("--target")
        .arg(args.target.as_str())
        .arg("--out")
        .arg(&args.out)
        .env("PYTHONUNBUFFERED", "1");
    if let Some(r) = &args.revision {
        cmd.arg("--revision").arg(r);
    }
    if let Some(b) = args.batch_size {
        cmd.arg("--batch-size").arg(b.to_string());
    }
    if let Some((w, h)) = args.size {
        cmd.arg("--size").arg(format!("{w}x{h}"));
    }
    if let Some(repo) = &args.push {
        cmd.arg("--push").arg(repo);
    }
    if args.force {
        cmd.arg("--force");
    }
    if args.no_validate {
        cmd.arg("--no-validate");
    }
    if args.no_optimize {
        cmd.arg("--no-optimize");
    }
    cmd
}

fn default_venv(target: CompileTarget) -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set; pass --venv")?;
    Ok(base
        .join("anyaccel")
        .join(format!("compile-venv-{}", env_name(target))))
}

/// Creates `venv` if needed and installs the target's pinned requirements
/// unless the stamp says they already are; returns its interpreter.
fn prepare_venv(venv: &Path, target: CompileTarget, base_python: &Path) -> anyhow::Result<PathBuf> {
    let python = venv.join("bin/python");
    let reqs = requirements(target);
    let stamp_text: String = reqs
        .iter()
        .map(|(name, text)| format!("== {name}\n{text}"))
        .collect();
    let stamp = venv.join(STAMP);
    if python.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == stamp_text) {
        tracing::info!(venv = %venv.display(), "compile environment is up to date");
        return Ok(python);
    }
    if !python.is_file() {
        tracing::info!(venv = %venv.display(), "creating the compile environment");
        run_checked(
            Command::new(base_python).arg("-m").arg("venv").arg(venv),
            "creating the venv",
        )
        .with_context(|| {
            format!(
                "is `{}` a Python 3.10+ interpreter? (--base-python)",
                base_python.display()
            )
        })?;
    }
    let dir = venv.join("anyaccel-requirements");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in &reqs {
        std::fs::write(dir.join(name), text).with_context(|| format!("writing {name}"))?;
    }
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "install", "--disable-pip-version-check"]);
    if no_deps(target) {
        pip.arg("--no-deps");
    }
    pip.arg("-r").arg(dir.join(reqs[0].0));
    tracing::info!(venv = %venv.display(), target = %target, "installing the pinned exporter packages (first run downloads a few GB)");
    run_checked(&mut pip, "installing the exporter packages")?;
    std::fs::write(&stamp, stamp_text).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(python)
}

fn run_checked(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: could not run {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: CompileArgs,
    }

    fn parse(argv: &[&str]) -> Result<CompileArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("compile").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn parses_the_documented_flags() {
        let a = parse(&[
            "--model",
            "owner/sd",
            "--target",
            "neuron",
            "--out",
            "/tmp/x",
            "--batch-size",
            "2",
            "--size",
            "512x768",
            "--push",
            "me/sd-neuron",
        ])
        .unwrap();
        assert_eq!(a.target, CompileTarget::Neuron);
        assert_eq!(a.size, Some((512, 768)));
        assert_eq!(a.batch_size, Some(2));
        assert_eq!(a.push.as_deref(), Some("me/sd-neuron"));
        assert!(parse(&["--model", "m", "--target", "tpu", "--out", "x"]).is_err());
        assert!(
            parse(&[
                "--model", "m", "--target", "neuron", "--out", "x", "--size", "500x512"
            ])
            .is_err()
        );
    }

    #[test]
    fn onnx_targets_reject_static_shapes() {
        let a = parse(&[
            "--model",
            "owner/sd",
            "--target",
            "onnx-fp32",
            "--out",
            "/nonexistent/x",
            "--size",
            "512x512",
        ])
        .unwrap();
        let err = validate(&a).unwrap_err().to_string();
        assert!(err.contains("apply to --target neuron"), "{err}");
    }

    #[test]
    fn bad_model_specs_are_rejected_before_any_work() {
        let a = parse(&[
            "--model",
            "./nowhere",
            "--target",
            "onnx-fp32",
            "--out",
            "/nonexistent/x",
        ])
        .unwrap();
        assert!(
            validate(&a)
                .unwrap_err()
                .to_string()
                .contains("not a Hub repo id")
        );
    }

    #[test]
    fn the_export_command_carries_every_option() {
        let a = parse(&[
            "--model",
            "owner/sd",
            "--target",
            "neuron",
            "--out",
            "/o",
            "--size",
            "512x512",
            "--force",
            "--no-validate",
        ])
        .unwrap();
        let cmd = export_command(Path::new("py"), Path::new("s.py"), &a);
        let argv: Vec<String> = cmd
            .get_args()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            argv,
            [
                "s.py",
                "--model",
                "owner/sd",
                "--target",
                "neuron",
                "--out",
                "/o",
                "--size",
                "512x512",
                "--force",
                "--no-validate"
            ]
        );
    }

    #[test]
    fn embedded_requirements_are_the_repo_files() {
        assert!(REQ_EXPORT_ONNX.contains("-r requirements-cpu.txt"));
        assert!(REQ_CPU.contains("torch=="));
        assert!(REQ_NEURON.contains("optimum-neuron=="));
        assert!(COMPILE_PY.contains("anyaccel-manifest.json"));
    }
}
