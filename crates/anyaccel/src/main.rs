//! `anyaccel`: one binary for generating, serving, deploying and benchmarking.

mod compile;
mod generate;
mod serve;
mod telemetry;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "anyaccel",
    version,
    about = "Hardware-agnostic Stable Diffusion inference"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    telemetry: telemetry::TelemetryArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images from a prompt (txt2img) or an init image (img2img).
    Generate(Box<generate::GenerateArgs>),
    /// Serve the OpenAI, native jobs and A1111 APIs over HTTP.
    Serve(Box<serve::ServeArgs>),
    /// Export a model for one target (onnx-fp32, onnx-int8, onnx-openvino, onnx-fp16, neuron) with its manifest.
    Compile(compile::CompileArgs),
    /// Kubernetes manifests for a fleet of accelerator pools.
    #[command(subcommand)]
    Deploy(DeployCommand),
    /// Drive a running endpoint and find its breaking point under an SLO.
    Bench(Box<anyaccel_bench::BenchArgs>),
    /// Turn bench results and prices into cost per image, pool weights and KEDA targets.
    Plan(Box<anyaccel_bench::PlanArgs>),
    /// Steer the ALB's pool weights to the capacity each pool can get (runs in the cluster).
    Fleet(Box<anyaccel_fleet::FleetArgs>),
}

#[derive(Subcommand)]
enum DeployCommand {
    /// Render a cluster description (TOML) to YAML, or to one file per object with --out.
    Render(anyaccel_deploy::RenderArgs),
}

fn main() -> anyhow::Result<()> {
    anyaccel_executor_onnx::release_large_frees_to_os();
    let cli = Cli::parse();
    let _telemetry = telemetry::init(&cli.telemetry)?;
    match cli.command {
        Command::Generate(args) => generate::run(*args),
        Command::Serve(args) => serve::run(*args),
        Command::Compile(args) => compile::run(args),
        Command::Deploy(DeployCommand::Render(args)) => Ok(anyaccel_deploy::run(&args)?),
        Command::Bench(args) => Ok(anyaccel_bench::run_bench(&args)?),
        Command::Plan(args) => Ok(anyaccel_bench::run_plan(&args)?),
        Command::Fleet(args) => Ok(anyaccel_fleet::run(&args)?),
    }
}
