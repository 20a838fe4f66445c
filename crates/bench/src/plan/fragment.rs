//! plan.toml: the plan as `anyaccel deploy render --plan` reads it. The
//! format (and its checks) is `anyaccel_deploy::plan`'s; this only fills it.

use anyaccel_deploy::plan::{PLAN_FILE_VERSION, PlanFile, PlanPool, PlanSummary};

use super::{Plan, round};
use crate::BenchError;

impl Plan {
    /// The plan file; `None` when no plan is feasible.
    pub fn fragment(&self) -> Option<PlanFile> {
        let mix = self.mix.as_ref()?;
        if !self.is_feasible() {
            return None;
        }
        Some(PlanFile {
            format_version: PLAN_FILE_VERSION,
            plan: PlanSummary {
                generated_at: self.generated_at.clone(),
                tool_version: self.tool_version.clone(),
                latency_slo_secs: self.slo_p95_s,
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
                .map(|p| PlanPool {
                    name: p.name.clone(),
                    weight: p.weight,
                    node_pool_weight: p.node_pool_weight,
                    target_backlog_secs: round(p.target_backlog_secs, 3),
                    max_replicas: p.max_replicas,
                    instance_type: p.instance_type.clone(),
                    accelerator: p.accelerator.clone(),
                    target_images_per_second: round(p.target_images_per_s, 4),
                    planned_replicas: p.planned_replicas,
                    fallback_rank: u32::try_from(p.fallback_rank).unwrap_or(u32::MAX),
                    cost_per_1000_images: round(p.cost_per_1000_images, 4),
                })
                .collect(),
        })
    }

    /// The plan file as TOML with a header comment; `None` when infeasible.
    pub fn fragment_toml(&self) -> Result<Option<String>, BenchError> {
        let Some(f) = self.fragment() else {
            return Ok(None);
        };
        let body = toml::to_string(&f).map_err(|e| BenchError::Parse {
            path: "plan.toml".into(),
            message: e.to_string(),
        })?;
        let mut text = format!(
            "# Written by `anyaccel plan` {} at {}; format in docs/bench.md.\n# Pools are listed cheapest first. Deploy with\n#   anyaccel deploy render --config cluster.toml --plan plan.toml\n{body}",
            self.tool_version, self.generated_at
        );
        if !text.ends_with('\n') {
            text.push('\n');
        }
        Ok(Some(text))
    }
}
