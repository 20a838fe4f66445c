//! The Markdown report plan writes (plan.md) and prints.

use super::{Plan, round};
use crate::result::fmt_num;
use std::fmt::Write;

impl Plan {
    /// A readable report.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let cur = &self.currency;
        let _ = writeln!(s, "# anyaccel plan");
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "SLO p95 ≤ {} s; demand {} images/s at the peak{}; {} prices{}; headroom {}%; cost-mode weights: {}.",
            fmt_num(self.slo_p95_s),
            fmt_num(round(self.demand.peak, 4)),
            if self.demand.profile.is_empty() {
                String::new()
            } else {
                format!(" (profile of {} periods)", self.demand.profile.len())
            },
            self.capacity_type.as_str(),
            self.prices_source
                .as_ref()
                .map_or_else(String::new, |s| format!(" ({s})")),
            fmt_num(self.headroom * 100.0),
            self.weights_mode.as_str()
        );
        let _ = writeln!(s);
        if let Some(why) = &self.infeasible {
            let _ = writeln!(s, "## No feasible plan");
            let _ = writeln!(s);
            let _ = writeln!(s, "{why}. No config fragment was written.");
            let _ = writeln!(s);
        }
        if !self.pools.is_empty() {
            let _ = writeln!(s, "## Pools that meet the SLO, cheapest image first");
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "| pool | instance | accelerator | {cur}/h | capacity img/s/replica | at level | p95 s | {cur} per 1000 images | at KEDA target | KEDA target img/s | KEDA backlog s | NodePool weight | ingress weight | fallback | planned | max replicas |"
            );
            let _ = writeln!(
                s,
                "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for p in &self.pools {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.4} | {:.4} | {} | {:.3} | {:.4} | {:.4} | {:.4} | {:.3} | {} | {} | {} | {} | {} |",
                    p.name,
                    p.instance_type,
                    p.accelerator,
                    p.price_per_hour,
                    p.capacity_images_per_s,
                    p.capacity_level,
                    p.p95_s,
                    p.cost_per_1000_images,
                    p.cost_per_1000_images_at_target,
                    p.target_images_per_s,
                    p.target_backlog_secs,
                    p.node_pool_weight,
                    p.weight,
                    p.fallback_rank,
                    p.planned_replicas,
                    p.max_replicas
                );
            }
            let _ = writeln!(s);
        }
        if !self.excluded.is_empty() {
            let _ = writeln!(s, "## Pools that do not meet the SLO");
            let _ = writeln!(s);
            for e in &self.excluded {
                let _ = writeln!(s, "- **{}** ({}): {}", e.name, e.instance_type, e.reason);
            }
            let _ = writeln!(s);
        }
        if let Some(m) = &self.mix {
            let _ = writeln!(s, "## Cheapest mix at the peak");
            let _ = writeln!(s);
            let reps: Vec<String> = m
                .replicas
                .iter()
                .map(|(k, v)| format!("{v} × {k}"))
                .collect();
            let _ = writeln!(
                s,
                "{} for {} images/s: {:.4} {cur}/h, {:.4} {cur} per 1000 images, sustaining {:.3} images/s at the KEDA targets{}.",
                reps.join(" + "),
                fmt_num(round(m.demand_images_per_s, 4)),
                m.cost_per_hour,
                m.cost_per_1000_images,
                m.capacity_images_per_s,
                if m.proven_optimal {
                    ""
                } else {
                    " (best found, not proven cheapest)"
                }
            );
            let _ = writeln!(s);
        }
        if let Some(pc) = &self.profile_cost {
            let _ = writeln!(
                s,
                "Over the demand profile ({} h, {:.0} images), re-mixing each period: {:.2} {cur}, {:.4} {cur} per 1000 images (a floor: it assumes replicas follow demand exactly).",
                fmt_num(round(pc.hours, 3)),
                pc.images,
                pc.cost,
                pc.cost_per_1000_images
            );
            let _ = writeln!(s);
        }
        if self.is_feasible() && !self.pools.is_empty() {
            let order: Vec<&str> = self.pools.iter().map(|p| p.name.as_str()).collect();
            let _ = writeln!(s, "## Modes");
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "- **Cost mode** (ingress `cost-weighted`): traffic split by the ingress weights above; Karpenter prefers NodePools by weight."
            );
            let _ = writeln!(
                s,
                "- **Capacity mode** (ingress `even`): fallback order {}; per-replica throughput targets (the seed's adjusted throughput, min(mean capacity, own)): {}.",
                order.join(" → "),
                self.pools
                    .iter()
                    .map(|p| format!(
                        "{} {:.3} img/s",
                        p.name, p.capacity_mode_target_images_per_s
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let _ = writeln!(s);
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "## Notes");
            let _ = writeln!(s);
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s, "## How the numbers are made");
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "- Capacity per replica: the highest measured throughput whose p95 ≤ SLO (and error rate within the limit), divided by the replicas measured."
        );
        let _ = writeln!(
            s,
            "- Cost per 1000 images = (price per node-hour / pods per node) / (capacity × 3600) × 1000; \"at KEDA target\" uses capacity × (1 − headroom)."
        );
        let _ = writeln!(
            s,
            "- KEDA backlog target = (1 − headroom) × mean latency at capacity: by Little's law a replica at capacity holds about that many seconds of work."
        );
        // A lone pool's total is 999: one ALB target group takes no more.
        let total = match self.pools.len() {
            0 => anyaccel_deploy::plan::PLAN_WEIGHT_TOTAL,
            n => anyaccel_deploy::plan::plan_weight_total(n),
        };
        let _ = writeln!(
            s,
            "- NodePool weights: 100 for the cheapest, 10 less per rank (equal costs share a weight). Ingress weights sum to {total}, each 1..=999; pools outside the mix keep 1 so they stay warm for fallback."
        );
        let _ = writeln!(
            s,
            "- max_replicas: enough for the pool to carry the peak alone (capacity-mode fallback), capped by what is available."
        );
        s
    }
}
