//! The `anyaccel plan` command line.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CapacityType {
    OnDemand,
    Spot,
}

impl CapacityType {
    pub fn as_str(self) -> &'static str {
        match self {
            CapacityType::OnDemand => "on-demand",
            CapacityType::Spot => "spot",
        }
    }
}

/// How cost mode splits traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WeightMode {
    /// In proportion to each pool's capacity in the cheapest mix for the
    /// demand; pools outside the mix get the minimum weight (1).
    Mix,
    /// In proportion to 1 / cost per image: every feasible pool carries
    /// traffic, cheaper ones more (the seed's approach, computed).
    InverseCost,
}

impl WeightMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WeightMode::Mix => "mix",
            WeightMode::InverseCost => "inverse-cost",
        }
    }
}

/// Turn bench results and prices into costs, weights and KEDA targets.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "plan",
    about = "From bench results per pool and instance prices: cost per 1,000 images at the SLO, the cheapest mix for a demand, Karpenter and ingress weights, KEDA targets; plan.toml for `anyaccel deploy render --plan` and a Markdown report"
)]
pub struct PlanArgs {
    /// Result files from `anyaccel bench` (tagged with --pool and
    /// --instance-type). Several files of one pool are merged.
    #[arg(long = "results", num_args = 1..)]
    pub results: Vec<PathBuf>,
    /// Capacity tables (TOML): measured capacity per pool from elsewhere,
    /// e.g. a published benchmark (see bench/seed-published-table.toml).
    #[arg(long = "table", num_args = 1..)]
    pub tables: Vec<PathBuf>,
    /// Prices file (TOML): on-demand and spot $/hour per instance type.
    #[arg(long)]
    pub prices: PathBuf,
    /// Latency SLO: p95 seconds.
    #[arg(long = "slo")]
    pub slo_p95: f64,
    /// Expected demand, images per second (peak).
    #[arg(long, conflicts_with = "demand_profile")]
    pub demand: Option<f64>,
    /// Expected demand over time (TOML): `points` in images per second at
    /// equal `period_minutes`; sized for the peak, costed over the profile.
    #[arg(long)]
    pub demand_profile: Option<PathBuf>,
    /// Share of measured capacity kept free: replicas are targeted at
    /// capacity x (1 - headroom).
    #[arg(long, default_value_t = 0.2)]
    pub headroom: f64,
    /// Which price to use: on-demand or spot.
    #[arg(long, value_enum, default_value_t = CapacityType::OnDemand)]
    pub capacity_type: CapacityType,
    /// A level with more failed requests than this does not count as meeting the SLO.
    #[arg(long, default_value_t = 0.01)]
    pub max_error_rate: f64,
    /// How cost mode splits traffic across pools.
    #[arg(long, value_enum, default_value_t = WeightMode::Mix)]
    pub weights: WeightMode,
    /// Replicas a pool can get at most (capacity available), as POOL=N;
    /// overrides the prices file's max_nodes.
    #[arg(long = "max-replicas", value_parser = parse_pool_cap)]
    pub max_replicas: Vec<(String, u32)>,
    /// Output folder: plan.toml (for `deploy render --plan`) and plan.md (the report).
    #[arg(long, default_value = "plan-out")]
    pub out: PathBuf,
    /// Do not print the report to stdout.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_pool_cap(s: &str) -> Result<(String, u32), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not POOL=N"))?;
    let n = v
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: {v:?} is not a whole number"))?;
    Ok((k.trim().to_string(), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_caps_parse() {
        assert_eq!(parse_pool_cap("g5=3"), Ok(("g5".into(), 3)));
        assert!(parse_pool_cap("g5").is_err());
        assert!(parse_pool_cap("g5=x").is_err());
    }
}
