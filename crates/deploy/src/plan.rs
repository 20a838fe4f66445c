//! `plan.toml`: what `anyaccel plan` writes and `deploy render --plan` reads.
//!
//! The format is defined once, here: the planner builds a [`PlanFile`] and
//! the renderer checks and applies it. Keys that also exist in the cluster
//! config (`weight`, `node_pool_weight`, `target_backlog_secs`,
//! `max_replicas`, `latency_slo_secs`, `capacity_type`) are spelled the same
//! in both.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::DeployError;
use crate::fleet::{ALB_MAX_WEIGHT, PlanStamp};

/// Version of `plan.toml`. Version 1 spelled `node_pool_weight` as
/// `nodepool_weight`, `target_backlog_secs` as `keda_target_backlog_seconds`
/// and `latency_slo_secs` as `slo_p95_s`.
pub const PLAN_FILE_VERSION: u32 = 2;
/// A plan's ingress weights add up to this when it has two pools or more
/// (each 1..=[`ALB_MAX_WEIGHT`]); see [`plan_weight_total`].
pub const PLAN_WEIGHT_TOTAL: u32 = 1000;

/// What the ingress weights of a plan with `pools` pools add up to:
/// [`PLAN_WEIGHT_TOTAL`], except that a single pool gets [`ALB_MAX_WEIGHT`]
/// (one ALB target group takes at most 999, and alone it gets all traffic
/// whatever its weight). The planner writes this and the renderer checks it.
pub fn plan_weight_total(pools: usize) -> u32 {
    let most = u32::try_from(pools)
        .unwrap_or(u32::MAX)
        .saturating_mul(u32::from(ALB_MAX_WEIGHT));
    PLAN_WEIGHT_TOTAL.min(most)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    pub format_version: u32,
    pub plan: PlanSummary,
    /// One per pool that meets the SLO, cheapest image first.
    pub pools: Vec<PlanPool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSummary {
    pub generated_at: String,
    pub tool_version: String,
    /// The p95 latency the plan meets; every planned pool's SLO.
    pub latency_slo_secs: f64,
    pub headroom: f64,
    /// Which prices were used: `on-demand` or `spot`.
    pub capacity_type: String,
    /// How the ingress weights were computed: `mix` or `inverse-cost`.
    pub weights: String,
    pub demand_peak_images_per_s: f64,
    pub currency: String,
    pub cost_per_hour_at_peak: f64,
    /// Pool names, first to last, for when a pool cannot get capacity.
    pub fallback_order: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanPool {
    pub name: String,
    /// ALB weight while every pool can grow: 1..=999; all pools sum to
    /// [`plan_weight_total`] (1000, or 999 for a lone pool).
    pub weight: u32,
    /// Karpenter NodePool `spec.weight`: 1..=100, higher is preferred.
    pub node_pool_weight: u32,
    /// Per-replica KEDA target for the backlog signal (seconds of work).
    pub target_backlog_secs: f64,
    /// KEDA `maxReplicaCount`: 1..=1000.
    pub max_replicas: u32,
    // Informational: not needed to render, checked where it can contradict.
    pub instance_type: String,
    pub accelerator: String,
    pub target_images_per_second: f64,
    pub planned_replicas: u32,
    pub fallback_rank: u32,
    pub cost_per_1000_images: f64,
}

/// A checked plan, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    file: PlanFile,
    origin: String,
    stamp: PlanStamp,
}

impl Plan {
    pub fn from_path(path: &Path) -> Result<Self, DeployError> {
        let text = std::fs::read_to_string(path).map_err(|source| DeployError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and checks `text`; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, DeployError> {
        let parse_error = |e: toml::de::Error| DeployError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        };
        // The version first, so a plan from another release says so rather
        // than failing on a renamed key.
        let table: toml::Table = toml::from_str(text).map_err(parse_error)?;
        match table
            .get("format_version")
            .and_then(toml::Value::as_integer)
        {
            Some(v) if v == i64::from(PLAN_FILE_VERSION) => {}
            found => {
                return Err(DeployError::PlanVersion {
                    origin: origin.to_string(),
                    found: found.map_or_else(|| "none".into(), |v| v.to_string()),
                    expected: PLAN_FILE_VERSION,
                });
            }
        }
        let file: PlanFile = toml::from_str(text).map_err(parse_error)?;
        let problems = check(&file);
        if !problems.is_empty() {
            return Err(DeployError::InvalidPlan {
                origin: origin.to_string(),
                problems,
            });
        }
        let stamp = PlanStamp {
            sha256: sha256_hex(text.as_bytes()),
            generated_at: file.plan.generated_at.clone(),
        };
        Ok(Plan {
            file,
            origin: origin.to_string(),
            stamp,
        })
    }

    pub fn file(&self) -> &PlanFile {
        &self.file
    }
    /// The path (or name) it was read from.
    pub fn origin(&self) -> &str {
        &self.origin
    }
    pub fn stamp(&self) -> &PlanStamp {
        &self.stamp
    }
    pub fn pool(&self, name: &str) -> Option<&PlanPool> {
        self.file.pools.iter().find(|p| p.name == name)
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Everything wrong with a parsed plan, each naming its field.
fn check(f: &PlanFile) -> Vec<String> {
    let mut out = Vec::new();
    let s = &f.plan;
    if !(s.latency_slo_secs.is_finite() && s.latency_slo_secs > 0.0 && s.latency_slo_secs <= 3600.0)
    {
        out.push(format!(
            "plan.latency_slo_secs ({}) must be within (0, 3600]",
            s.latency_slo_secs
        ));
    }
    if !matches!(s.capacity_type.as_str(), "on-demand" | "spot") {
        out.push(format!(
            "plan.capacity_type {:?} is unknown; allowed: on-demand, spot",
            s.capacity_type
        ));
    }
    if f.pools.is_empty() {
        out.push("pools: a plan names at least one pool".into());
    }
    let mut names = BTreeSet::new();
    for (i, p) in f.pools.iter().enumerate() {
        let at = format!("pools[{i}] ({:?})", p.name);
        if !names.insert(p.name.as_str()) {
            out.push(format!("{at}: the pool is listed twice"));
        }
        if !(1..=u32::from(ALB_MAX_WEIGHT)).contains(&p.weight) {
            out.push(format!(
                "{at}.weight ({}) must be within 1..={ALB_MAX_WEIGHT} (an ALB target group takes 0..=999; 0 would starve the pool)",
                p.weight
            ));
        }
        if !(1..=100).contains(&p.node_pool_weight) {
            out.push(format!(
                "{at}.node_pool_weight ({}) must be within 1..=100 (Karpenter NodePool weight)",
                p.node_pool_weight
            ));
        }
        if !(p.target_backlog_secs.is_finite() && p.target_backlog_secs > 0.0) {
            out.push(format!(
                "{at}.target_backlog_secs ({}) must be above 0",
                p.target_backlog_secs
            ));
        } else if p.target_backlog_secs >= s.latency_slo_secs {
            out.push(format!(
                "{at}.target_backlog_secs ({}) must be below plan.latency_slo_secs ({})",
                p.target_backlog_secs, s.latency_slo_secs
            ));
        }
        if !(1..=1000).contains(&p.max_replicas) {
            out.push(format!(
                "{at}.max_replicas ({}) must be within 1..=1000",
                p.max_replicas
            ));
        }
    }
    let total: u32 = f.pools.iter().map(|p| p.weight).sum();
    let want = plan_weight_total(f.pools.len());
    if !f.pools.is_empty() && total != want {
        out.push(format!(
            "pools: the weights sum to {total}, but this plan's ingress weights sum to {want} ({PLAN_WEIGHT_TOTAL}, or {ALB_MAX_WEIGHT} for a single pool; the file was edited, re-run `anyaccel plan`)"
        ));
    }
    let order: BTreeSet<&str> = s.fallback_order.iter().map(String::as_str).collect();
    if order != names || s.fallback_order.len() != f.pools.len() {
        out.push(format!(
            "plan.fallback_order {:?} must list each of the plan's pools once ({:?})",
            s.fallback_order,
            f.pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>()
        ));
    }
    out
}
