//! Stand-alone `deploy render` for scripts (scripts/deploy/validate.sh) and
//! for trying configs before the main binary wires the subcommand:
//!
//!   cargo run -p anyaccel-deploy --example render -- --config FILE [--out DIR]

use clap::Parser;

#[derive(Parser)]
#[command(about = "Render the anyaccel Kubernetes fleet from a cluster config")]
struct Cli {
    #[command(flatten)]
    render: anyaccel_deploy::RenderArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match anyaccel_deploy::run(&cli.render) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
