//! `anyaccel bench` and `anyaccel plan` without the main binary:
//! `cargo run -p anyaccel-bench --example cli -- plan --table ... --prices ...`.
//! The `anyaccel` binary wires the same argument structs as subcommands.

use anyaccel_bench::{BenchArgs, PlanArgs, run_bench, run_plan};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "anyaccel-bench-cli")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Bench(Box<BenchArgs>),
    Plan(PlanArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let res = match &cli.cmd {
        Cmd::Bench(a) => run_bench(a),
        Cmd::Plan(a) => run_plan(a),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
