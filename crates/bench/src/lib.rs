//! `anyaccel bench` and `anyaccel plan`.
//!
//! `bench` drives a running anyaccel endpoint (closed loop, open loop with
//! Poisson arrivals, wave profiles), reports latency percentiles, throughput
//! and the breaking point under a latency SLO, checks its counts against the
//! server's `/metrics`, and writes a JSON result, a Markdown table and PNG
//! plots. `plan` turns results for several pools plus instance prices into
//! cost per 1,000 images, the cheapest mix, Karpenter and ingress weights and
//! per-replica KEDA targets, as `plan.toml` for `anyaccel deploy render
//! --plan` and a Markdown report. See docs/bench.md.

pub mod bench;
pub mod client;
mod error;
pub mod mix;
pub mod plan;
pub mod plot;
pub mod report;
pub mod result;
pub mod rng;
pub mod runner;
pub mod schedule;
pub mod stats;

pub use bench::{BenchArgs, BenchOutput, bench, run_bench};
pub use error::BenchError;
pub use plan::{PlanArgs, PlanOutput, plan, run_plan};
pub use result::{BenchResult, FORMAT_VERSION};
