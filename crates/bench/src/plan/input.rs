//! What plan reads: the prices file, capacity tables, bench results and a
//! demand profile, checked and normalised to per-replica levels per pool.

use super::{CapacityType, PLAN_FORMAT_VERSION, PlanArgs, WeightMode};
use crate::BenchError;
use crate::result::BenchResult;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

// ---------------------------------------------------------------------------
// Input files

/// Prices per instance type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    #[serde(default = "usd")]
    pub currency: String,
    /// Where the numbers came from (free text, shown in the report).
    #[serde(default)]
    pub source: Option<String>,
    pub instances: BTreeMap<String, InstancePrice>,
}

fn usd() -> String {
    "USD".into()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstancePrice {
    /// On-demand price per hour.
    pub on_demand: Option<f64>,
    /// Spot price per hour.
    pub spot: Option<f64>,
    /// Nodes of this type that can be had (quota or known shortage).
    pub max_nodes: Option<u32>,
    /// Replicas one node runs (default 1).
    pub pods_per_node: Option<u32>,
}

impl Prices {
    pub fn read(path: &Path) -> Result<Self, BenchError> {
        let p: Prices = read_toml(path)?;
        for (name, ip) in &p.instances {
            for (what, v) in [("on_demand", ip.on_demand), ("spot", ip.spot)] {
                if let Some(v) = v
                    && !(v.is_finite() && v > 0.0)
                {
                    return Err(BenchError::BadInput {
                        path: path.display().to_string(),
                        message: format!("instances.{name:?}.{what} ({v}) must be above 0"),
                    });
                }
            }
            if ip.pods_per_node == Some(0) {
                return Err(BenchError::BadInput {
                    path: path.display().to_string(),
                    message: format!("instances.{name:?}.pods_per_node must be at least 1"),
                });
            }
        }
        Ok(p)
    }
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Io {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| BenchError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThroughputUnit {
    ImagesPerSecond,
    ImagesPerMinute,
    ImagesPerHour,
}

impl ThroughputUnit {
    /// Factor to images per second.
    pub fn per_second(self) -> f64 {
        match self {
            ThroughputUnit::ImagesPerSecond => 1.0,
            ThroughputUnit::ImagesPerMinute => 1.0 / 60.0,
            ThroughputUnit::ImagesPerHour => 1.0 / 3600.0,
        }
    }
}

/// Capacity measured elsewhere (one point per pool), e.g. a published table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityTable {
    pub format_version: u32,
    pub throughput_unit: ThroughputUnit,
    #[serde(default)]
    pub source: Option<String>,
    pub pools: Vec<TableRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableRow {
    pub name: String,
    pub instance_type: String,
    pub accelerator: String,
    /// Throughput at the measured point, in the table's unit, for `replicas`.
    pub throughput: f64,
    /// p95 latency at that throughput, seconds.
    pub p95_latency_s: f64,
    /// Mean latency there (default: the p95).
    #[serde(default)]
    pub mean_latency_s: Option<f64>,
    #[serde(default)]
    pub replicas: Option<u32>,
    #[serde(default)]
    pub note: Option<String>,
}

/// Expected demand over time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemandProfile {
    #[serde(default = "default_unit")]
    pub unit: ThroughputUnit,
    /// Minutes each point covers.
    #[serde(default = "sixty")]
    pub period_minutes: f64,
    pub points: Vec<f64>,
}

fn default_unit() -> ThroughputUnit {
    ThroughputUnit::ImagesPerSecond
}
fn sixty() -> f64 {
    60.0
}

/// The demand plan sizes for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Demand {
    /// Images per second at the peak.
    pub peak: f64,
    /// `(hours, images per second)` per period, when a profile was given.
    pub profile: Vec<(f64, f64)>,
}

// ---------------------------------------------------------------------------
// Normalised inputs

/// One measured load level, per replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasuredLevel {
    pub label: String,
    /// Images per second per replica.
    pub throughput: f64,
    pub p95_s: Option<f64>,
    pub mean_s: Option<f64>,
    pub error_rate: f64,
}

/// One pool as measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolInput {
    pub name: String,
    pub instance_type: String,
    pub accelerator: String,
    pub levels: Vec<MeasuredLevel>,
    /// Files it came from.
    pub sources: Vec<String>,
}

/// Everything plan computes from.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanInputs {
    pub pools: Vec<PoolInput>,
    pub prices: Prices,
    pub prices_path: String,
    pub slo_p95: f64,
    pub demand: Demand,
    pub headroom: f64,
    pub capacity_type: CapacityType,
    pub max_error_rate: f64,
    pub weights: WeightMode,
    /// Pool name -> replicas available (overrides the prices file).
    pub max_replicas: BTreeMap<String, u32>,
}

fn bad(path: &Path, message: impl Into<String>) -> BenchError {
    BenchError::BadInput {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn add_pool(pools: &mut Vec<PoolInput>, p: PoolInput, path: &Path) -> Result<(), BenchError> {
    if let Some(existing) = pools.iter_mut().find(|x| x.name == p.name) {
        if existing.instance_type != p.instance_type {
            return Err(bad(
                path,
                format!(
                    "pool {:?} is on {:?} here but on {:?} in {}; one pool, one instance type (tag runs with distinct --pool names)",
                    p.name,
                    p.instance_type,
                    existing.instance_type,
                    existing.sources.join(", ")
                ),
            ));
        }
        existing.levels.extend(p.levels);
        existing.sources.extend(p.sources);
    } else {
        pools.push(p);
    }
    Ok(())
}

/// A pool from a bench result file.
pub fn pool_from_result(r: &BenchResult, path: &Path) -> Result<PoolInput, BenchError> {
    let instance_type = r.tags.instance_type.clone().ok_or_else(|| {
        bad(
            path,
            "the result has no instance type tag; re-run bench with --instance-type (plan prices pools by it)",
        )
    })?;
    let replicas = r.tags.replicas.max(1);
    // Steady levels only: a wave's throughput follows the offered wave.
    let levels = r
        .levels
        .iter()
        .filter(|l| !matches!(l.load, crate::result::Load::Wave { .. }))
        .map(|l| MeasuredLevel {
            label: l.label.clone(),
            throughput: l.throughput_images_per_s / f64::from(replicas),
            p95_s: l.latency_s.map(|s| s.p95),
            mean_s: l.latency_s.map(|s| s.mean),
            error_rate: l.error_rate,
        })
        .collect();
    Ok(PoolInput {
        name: r.tags.pool.clone().unwrap_or_else(|| instance_type.clone()),
        accelerator: r
            .tags
            .accelerator
            .clone()
            .unwrap_or_else(|| "unknown".into()),
        instance_type,
        levels,
        sources: vec![path.display().to_string()],
    })
}

/// Pools from a capacity table.
pub fn pools_from_table(t: &CapacityTable, path: &Path) -> Result<Vec<PoolInput>, BenchError> {
    if t.format_version != PLAN_FORMAT_VERSION {
        return Err(BenchError::FormatVersion {
            path: path.display().to_string(),
            found: t.format_version.to_string(),
            expected: PLAN_FORMAT_VERSION,
        });
    }
    let mut out = Vec::new();
    for (i, row) in t.pools.iter().enumerate() {
        let at = format!("pools[{i}] ({:?})", row.name);
        if !(row.throughput.is_finite() && row.throughput > 0.0) {
            return Err(bad(path, format!("{at}.throughput must be above 0")));
        }
        if !(row.p95_latency_s.is_finite() && row.p95_latency_s > 0.0) {
            return Err(bad(path, format!("{at}.p95_latency_s must be above 0")));
        }
        let replicas = f64::from(row.replicas.unwrap_or(1).max(1));
        out.push(PoolInput {
            name: row.name.clone(),
            instance_type: row.instance_type.clone(),
            accelerator: row.accelerator.clone(),
            levels: vec![MeasuredLevel {
                label: "table".into(),
                throughput: row.throughput * t.throughput_unit.per_second() / replicas,
                p95_s: Some(row.p95_latency_s),
                mean_s: Some(row.mean_latency_s.unwrap_or(row.p95_latency_s)),
                error_rate: 0.0,
            }],
            sources: vec![path.display().to_string()],
        });
    }
    Ok(out)
}

/// Reads and checks every input named by `args`.
pub fn load_inputs(args: &PlanArgs) -> Result<PlanInputs, BenchError> {
    let invalid = |m: String| Err(BenchError::InvalidArgs(m));
    if args.results.is_empty() && args.tables.is_empty() {
        return invalid("give at least one --results file or --table".into());
    }
    if !(args.slo_p95.is_finite() && args.slo_p95 > 0.0) {
        return invalid(format!("--slo must be above 0, got {}", args.slo_p95));
    }
    if !(0.0..1.0).contains(&args.headroom) {
        return invalid(format!(
            "--headroom must be within 0..1 (a share of capacity kept free), got {}",
            args.headroom
        ));
    }
    if !(0.0..=1.0).contains(&args.max_error_rate) {
        return invalid(format!(
            "--max-error-rate must be within 0..=1, got {}",
            args.max_error_rate
        ));
    }
    let demand = match (args.demand, &args.demand_profile) {
        (Some(d), None) => {
            if !(d.is_finite() && d > 0.0) {
                return invalid(format!("--demand must be above 0 images/s, got {d}"));
            }
            Demand {
                peak: d,
                profile: Vec::new(),
            }
        }
        (None, Some(p)) => {
            let prof: DemandProfile = read_toml(p)?;
            if prof.points.is_empty() {
                return Err(bad(p, "points is empty"));
            }
            if !(prof.period_minutes.is_finite() && prof.period_minutes > 0.0) {
                return Err(bad(p, "period_minutes must be above 0"));
            }
            if prof.points.iter().any(|x| !(x.is_finite() && *x >= 0.0)) {
                return Err(bad(p, "every point must be a number >= 0"));
            }
            let f = prof.unit.per_second();
            let profile: Vec<(f64, f64)> = prof
                .points
                .iter()
                .map(|x| (prof.period_minutes / 60.0, x * f))
                .collect();
            let peak = profile.iter().map(|x| x.1).fold(0.0, f64::max);
            if peak <= 0.0 {
                return Err(bad(p, "the profile's peak is 0: nothing to plan for"));
            }
            Demand { peak, profile }
        }
        _ => return invalid("give --demand (images/s) or --demand-profile".into()),
    };

    let mut pools = Vec::new();
    for p in &args.results {
        let r = BenchResult::read(p)?;
        add_pool(&mut pools, pool_from_result(&r, p)?, p)?;
    }
    for p in &args.tables {
        let t: CapacityTable = {
            // Check the version before the shape, so an old table says so.
            let text = std::fs::read_to_string(p).map_err(|source| BenchError::Io {
                path: p.display().to_string(),
                source,
            })?;
            let v: toml::Table = toml::from_str(&text).map_err(|e| BenchError::Parse {
                path: p.display().to_string(),
                message: e.to_string(),
            })?;
            let found = v.get("format_version").and_then(toml::Value::as_integer);
            if found != Some(i64::from(PLAN_FORMAT_VERSION)) {
                return Err(BenchError::FormatVersion {
                    path: p.display().to_string(),
                    found: found.map_or_else(|| "none".into(), |f| f.to_string()),
                    expected: PLAN_FORMAT_VERSION,
                });
            }
            toml::from_str(&text).map_err(|e| BenchError::Parse {
                path: p.display().to_string(),
                message: e.to_string(),
            })?
        };
        for pool in pools_from_table(&t, p)? {
            add_pool(&mut pools, pool, p)?;
        }
    }
    let prices = Prices::read(&args.prices)?;
    let mut max_replicas = BTreeMap::new();
    for (k, v) in &args.max_replicas {
        if !pools.iter().any(|p| &p.name == k) {
            return invalid(format!(
                "--max-replicas names pool {k:?}, which no input has (pools: {})",
                pools
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        max_replicas.insert(k.clone(), *v);
    }
    Ok(PlanInputs {
        pools,
        prices,
        prices_path: args.prices.display().to_string(),
        slo_p95: args.slo_p95,
        demand,
        headroom: args.headroom,
        capacity_type: args.capacity_type,
        max_error_rate: args.max_error_rate,
        weights: args.weights,
        max_replicas,
    })
}
