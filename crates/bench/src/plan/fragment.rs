//! The TOML fragment plan writes (plan.toml).

use super::{PLAN_FORMAT_VERSION, Plan, round};
use crate::BenchError;
use serde::{Deserialize, Serialize};

/// The TOML fragment meant for `anyaccel deploy render`, which does not read
/// it yet; its schema is in docs/bench.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fragment {
    pub format_version: u32,
    pub plan: FragmentPlan,
    pub pools: Vec<FragmentPool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FragmentPlan {
    pub generated_at: String,
    pub tool_version: String,
    pub slo_p95_s: f64,
    pub headroom: f64,
    pub capacity_type: String,
    pub weights: String,
    pub demand_peak_images_per_s: f64,
    pub currency: String,
    pub cost_per_hour_at_peak: f64,
    /// Pool names, first to last, for capacity mode.
    pub fallback_order: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FragmentPool {
    pub name: String,
    /// Ingress weight in cost mode (relative, 1..=999, all pools sum to 1000).
    pub weight: u32,
    /// Karpenter NodePool `spec.weight`, 1..=100, higher = preferred.
    pub nodepool_weight: u32,
    /// Per-replica target for the backlog query (seconds of work).
    pub keda_target_backlog_seconds: f64,
    pub max_replicas: u32,
    // Informational: not needed to render, useful to read.
    pub instance_type: String,
    pub accelerator: String,
    pub target_images_per_second: f64,
    pub planned_replicas: u32,
    pub fallback_rank: usize,
    pub cost_per_1000_images: f64,
}

impl Plan {
    pub fn fragment(&self) -> Option<Fragment> {
        let mix = self.mix.as_ref()?;
        if !self.is_feasible() {
            return None;
        }
        Some(Fragment {
            format_version: PLAN_FORMAT_VERSION,
            plan: FragmentPlan {
                generated_at: self.generated_at.clone(),
                tool_version: self.tool_version.clone(),
                slo_p95_s: self.slo_p95_s,
                headroom: self.headroom,
                capacity_type: self.capacity_type.as_str().into(),
                weights: self.weights_mode.as_str().into(),
                demand_peak_images_per_s: round(self.demand.peak, 4),
                currency: self.currency.clone(),
                cost_per_hour_at_peak: round(mix.cost_per_hour, 4),
                fallback_order: self.pools.iter().map(|p| p.name.clone()).collect(),
            },
            pools: self
                .pools
                .iter()
                .map(|p| FragmentPool {
                    name: p.name.clone(),
                    weight: p.weight,
                    nodepool_weight: p.nodepool_weight,
                    keda_target_backlog_seconds: round(p.keda_target_backlog_seconds, 3),
                    max_replicas: p.max_replicas,
                    instance_type: p.instance_type.clone(),
                    accelerator: p.accelerator.clone(),
                    target_images_per_second: round(p.target_images_per_s, 4),
                    planned_replicas: p.planned_replicas,
                    fallback_rank: p.fallback_rank,
                    cost_per_1000_images: round(p.cost_per_1000_images, 4),
                })
                .collect(),
        })
    }

    /// The fragment as TOML with a header comment; `None` when infeasible.
    pub fn fragment_toml(&self) -> Result<Option<String>, BenchError> {
        let Some(f) = self.fragment() else {
            return Ok(None);
        };
        let body = toml::to_string(&f).map_err(|e| BenchError::Parse {
            path: "plan.toml".into(),
            message: e.to_string(),
        })?;
        let mut text = format!(
            "# Written by `anyaccel plan` {} at {}. Read by `anyaccel deploy render`;\n# format in docs/bench.md. Pools are listed cheapest first.\n{body}",
            self.tool_version, self.generated_at
        );
        if !text.ends_with('\n') {
            text.push('\n');
        }
        Ok(Some(text))
    }
}
