//! `anyaccel plan`: from measured capacity and prices to cost per image,
//! the cheapest mix of pools, and the weights and autoscaling targets meant
//! by `anyaccel deploy render --plan`.
//!
//! Split along the way a plan is made: `args` (the command line), `input`
//! (prices, capacity tables and bench results, read and checked), `compute`
//! (costs, weights and KEDA targets per pool), `solve` (the cheapest mix),
//! then `fragment` (plan.toml) and `report` (plan.md). Everything public is
//! re-exported here, so callers name it `plan::X`.

mod args;
mod compute;
mod fragment;
mod input;
mod report;
mod solve;

pub use args::{CapacityType, PlanArgs, WeightMode};
pub use compute::{compute, node_pool_weights, proportional_weights};
pub use input::{
    CapacityTable, Demand, DemandProfile, InstancePrice, MeasuredLevel, PlanInputs, PoolInput,
    Prices, TableRow, ThroughputUnit, load_inputs, pool_from_result, pools_from_table,
};
pub use solve::{MixPool, cheapest_mix};

use crate::BenchError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Version of the capacity-table format (plan.toml's is
/// `anyaccel_deploy::plan::PLAN_FILE_VERSION`).
pub const PLAN_FORMAT_VERSION: u32 = 1;
// The ingress weights' total and range are the renderer's, which checks them:
// `anyaccel_deploy::plan::plan_weight_total` and `fleet::ALB_MAX_WEIGHT`.
/// KEDA `maxReplicaCount` plan will write at most.
pub const MAX_REPLICAS_LIMIT: u32 = 1000;

// ---------------------------------------------------------------------------
// The plan (what `compute` returns; `fragment` and `report` render it)

/// A pool that can serve within the SLO, with everything derived for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolPlan {
    pub name: String,
    pub instance_type: String,
    pub accelerator: String,
    /// Price per node-hour used (on-demand or spot).
    pub price_per_hour: f64,
    pub pods_per_node: u32,
    /// The level that set the capacity.
    pub capacity_level: String,
    /// Images per second one replica sustains within the SLO.
    pub capacity_images_per_s: f64,
    /// p95 and mean latency at that level.
    pub p95_s: f64,
    pub mean_latency_s: f64,
    /// Cost of 1,000 images with replicas running at capacity.
    pub cost_per_1000_images: f64,
    /// The same at the KEDA target (capacity x (1 - headroom)).
    pub cost_per_1000_images_at_target: f64,
    /// Per-replica throughput KEDA aims for.
    pub target_images_per_s: f64,
    /// Per-replica backlog KEDA aims for, seconds of work.
    pub target_backlog_secs: f64,
    /// Karpenter NodePool weight, 1..=100 (higher = preferred).
    pub node_pool_weight: u32,
    /// Ingress weight for cost mode.
    pub weight: u32,
    /// 1 = first, in capacity mode's fallback order.
    pub fallback_rank: usize,
    /// Replicas in the cheapest mix at the peak.
    pub planned_replicas: u32,
    pub max_replicas: u32,
    /// Replicas available at most (from prices or --max-replicas).
    pub available_replicas: Option<u32>,
    /// Capacity mode: the seed's adjusted throughput, min(mean capacity, own).
    pub capacity_mode_target_images_per_s: f64,
}

/// A pool that cannot serve within the SLO, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Excluded {
    pub name: String,
    pub instance_type: String,
    pub reason: String,
}

/// The cheapest mix of replicas for one demand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mix {
    pub demand_images_per_s: f64,
    /// Pool name -> replicas (only pools with replicas).
    pub replicas: BTreeMap<String, u32>,
    pub cost_per_hour: f64,
    /// Images per second the mix sustains at the KEDA targets.
    pub capacity_images_per_s: f64,
    /// Cost per 1,000 images at this demand.
    pub cost_per_1000_images: f64,
    /// False when the search hit its node limit (best found, not proven).
    pub proven_optimal: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileCost {
    pub hours: f64,
    pub images: f64,
    pub cost: f64,
    pub cost_per_1000_images: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub generated_at: String,
    pub tool_version: String,
    pub currency: String,
    pub prices_source: Option<String>,
    pub slo_p95_s: f64,
    pub headroom: f64,
    pub capacity_type: CapacityType,
    pub weights_mode: WeightMode,
    pub demand: Demand,
    /// Feasible pools, cheapest first.
    pub pools: Vec<PoolPlan>,
    pub excluded: Vec<Excluded>,
    /// The cheapest mix at the peak; `None` when infeasible.
    pub mix: Option<Mix>,
    pub profile_cost: Option<ProfileCost>,
    /// Set when there is no plan, saying why.
    pub infeasible: Option<String>,
    pub notes: Vec<String>,
}

impl Plan {
    pub fn is_feasible(&self) -> bool {
        self.infeasible.is_none()
    }
}

/// Rounds to `d` decimals (keeps the fragment and tables readable).
fn round(x: f64, d: i32) -> f64 {
    let f = 10f64.powi(d);
    (x * f).round() / f
}

// ---------------------------------------------------------------------------
// Entry points

/// What `plan` wrote.
#[derive(Debug, Clone)]
pub struct PlanOutput {
    pub plan: Plan,
    pub report: String,
    pub report_path: PathBuf,
    /// `None` when there is no feasible plan.
    pub config_path: Option<PathBuf>,
}

/// Reads the inputs, computes the plan, writes plan.md and (when feasible)
/// plan.toml under `args.out`.
pub fn plan(args: &PlanArgs) -> Result<PlanOutput, BenchError> {
    let inputs = load_inputs(args)?;
    let plan = compute(&inputs)?;
    std::fs::create_dir_all(&args.out).map_err(|source| BenchError::Io {
        path: args.out.display().to_string(),
        source,
    })?;
    let report = plan.markdown();
    let report_path = args.out.join("plan.md");
    std::fs::write(&report_path, &report).map_err(|source| BenchError::Io {
        path: report_path.display().to_string(),
        source,
    })?;
    let config = args.out.join("plan.toml");
    let config_path = match plan.fragment_toml()? {
        Some(text) => {
            std::fs::write(&config, text).map_err(|source| BenchError::Io {
                path: config.display().to_string(),
                source,
            })?;
            Some(config)
        }
        None => {
            // A stale fragment from an earlier plan must not be deployed.
            if config.exists() {
                std::fs::remove_file(&config).map_err(|source| BenchError::Io {
                    path: config.display().to_string(),
                    source,
                })?;
            }
            None
        }
    };
    Ok(PlanOutput {
        plan,
        report,
        report_path,
        config_path,
    })
}

/// The `anyaccel plan` subcommand: prints the report (unless `--quiet`),
/// says where the files are, and fails with `NoFeasiblePlan` when nothing
/// meets the SLO and demand (the report still explains why).
pub fn run_plan(args: &PlanArgs) -> Result<(), BenchError> {
    let out = plan(args)?;
    if !args.quiet {
        println!("{}", out.report);
    }
    eprintln!("wrote {}", out.report_path.display());
    if let Some(p) = &out.config_path {
        eprintln!("wrote {}", p.display());
    }
    match &out.plan.infeasible {
        Some(why) => Err(BenchError::NoFeasiblePlan(format!(
            "{why} (report: {})",
            out.report_path.display()
        ))),
        None => Ok(()),
    }
}
