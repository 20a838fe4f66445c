//! `anyaccel plan`: from measured capacity and prices to cost per image,
//! the cheapest mix of pools, and the weights and autoscaling targets that
//! `anyaccel deploy render` consumes.

use crate::BenchError;
use crate::result::{BenchResult, fmt_num, now_rfc3339};
use crate::stats::{LevelPoint, breaking_point};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Version of the capacity-table and config-fragment formats.
pub const PLAN_FORMAT_VERSION: u32 = 1;
/// Sum of the ingress weights plan writes (ALB weights are relative).
pub const WEIGHT_TOTAL: u32 = 1000;
/// The largest single ingress weight an ALB target group accepts.
pub const MAX_INGRESS_WEIGHT: u32 = 999;
/// KEDA `maxReplicaCount` plan will write at most.
pub const MAX_REPLICAS_LIMIT: u32 = 1000;

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
    about = "From bench results per pool and instance prices: cost per 1,000 images at the SLO, the cheapest mix for a demand, Karpenter and ingress weights, KEDA targets; a TOML fragment for `anyaccel deploy render` and a Markdown report"
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
    /// Output folder: plan.toml (the fragment) and plan.md (the report).
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

// ---------------------------------------------------------------------------
// The plan

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
    pub keda_target_backlog_seconds: f64,
    /// Karpenter NodePool weight, 1..=100 (higher = preferred).
    pub nodepool_weight: u32,
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

/// Karpenter NodePool weights by rank: the cheapest gets 100, each next
/// step down by 10 (or less with more than 10 pools), at least 1; equal
/// costs share a weight. `costs` must be sorted ascending.
pub fn nodepool_weights(costs: &[f64]) -> Vec<u32> {
    let n = costs.len();
    let step = if n > 10 {
        (99 / (n as u32 - 1)).max(1)
    } else {
        10
    };
    let mut out = Vec::with_capacity(n);
    let mut rank = 0u32;
    for (i, c) in costs.iter().enumerate() {
        if i > 0 && !same_cost(*c, costs[i - 1]) {
            rank = i as u32;
        }
        out.push(100u32.saturating_sub(rank * step).max(1));
    }
    out
}

fn same_cost(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-12)
}

/// Integer weights summing to `total` in proportion to `shares` (largest
/// remainder). Every entry gets at least `min`; none more than `max`.
pub fn proportional_weights(shares: &[f64], total: u32, min: u32, max: u32) -> Vec<u32> {
    let n = shares.len() as u32;
    if n == 0 {
        return Vec::new();
    }
    let positive: f64 = shares.iter().filter(|s| **s > 0.0).sum();
    let zero_count = shares.iter().filter(|s| **s <= 0.0).count() as u32;
    // Pools with no share get the minimum; the rest split what remains.
    let pool_total = total.saturating_sub(zero_count * min);
    let mut w: Vec<u32> = vec![min; shares.len()];
    if positive > 0.0 {
        let exact: Vec<f64> = shares
            .iter()
            .map(|s| {
                if *s > 0.0 {
                    s / positive * f64::from(pool_total)
                } else {
                    0.0
                }
            })
            .collect();
        let mut assigned = 0u32;
        for (i, e) in exact.iter().enumerate() {
            if shares[i] > 0.0 {
                w[i] = e.floor() as u32;
                assigned += w[i];
            }
        }
        let mut order: Vec<usize> = (0..shares.len()).filter(|&i| shares[i] > 0.0).collect();
        order.sort_by(|&a, &b| {
            let ra = exact[a] - exact[a].floor();
            let rb = exact[b] - exact[b].floor();
            rb.total_cmp(&ra).then(a.cmp(&b))
        });
        let mut left = pool_total.saturating_sub(assigned);
        for &i in order.iter().cycle().take(order.len() * 2) {
            if left == 0 {
                break;
            }
            w[i] += 1;
            left -= 1;
        }
    }
    for x in &mut w {
        *x = (*x).clamp(min, max);
    }
    w
}

/// One pool as the mix search sees it.
#[derive(Debug, Clone, Copy)]
pub struct MixPool {
    /// Cost per replica-hour.
    pub price: f64,
    /// Images per second per replica at the KEDA target.
    pub capacity: f64,
    /// Replicas available at most.
    pub cap: Option<u32>,
}

/// The cheapest whole number of replicas per pool whose capacity covers
/// `demand`: branch and bound, pools in order of cost per image, bounded by
/// the fractional relaxation. `None` when the caps make it impossible.
/// Returns replicas per pool (in input order), cost per hour, and whether the
/// search finished (rather than hitting its node limit).
pub fn cheapest_mix(pools: &[MixPool], demand: f64) -> Option<(Vec<u32>, f64, bool)> {
    const EPS: f64 = 1e-9;
    const NODE_LIMIT: u64 = 2_000_000;
    let mut order: Vec<usize> = (0..pools.len())
        .filter(|&i| pools[i].capacity > 0.0 && pools[i].cap != Some(0))
        .collect();
    order.sort_by(|&a, &b| {
        (pools[a].price / pools[a].capacity).total_cmp(&(pools[b].price / pools[b].capacity))
    });
    if demand <= EPS {
        return Some((vec![0; pools.len()], 0.0, true));
    }
    // Suffix minima of cost per capacity and suffix capacity sums.
    let n = order.len();
    let mut best_eff = vec![f64::INFINITY; n + 1];
    let mut reach = vec![0.0f64; n + 1];
    for k in (0..n).rev() {
        let p = &pools[order[k]];
        best_eff[k] = best_eff[k + 1].min(p.price / p.capacity);
        reach[k] = reach[k + 1] + p.cap.map_or(f64::INFINITY, |c| f64::from(c) * p.capacity);
    }
    if reach[0] + EPS < demand {
        return None;
    }

    struct Search<'a> {
        pools: &'a [MixPool],
        order: &'a [usize],
        best_eff: &'a [f64],
        reach: &'a [f64],
        cur: Vec<u32>,
        best: Option<(Vec<u32>, f64)>,
        nodes: u64,
    }
    impl Search<'_> {
        fn go(&mut self, k: usize, remaining: f64, cost: f64) {
            self.nodes += 1;
            if self.nodes > NODE_LIMIT {
                return;
            }
            if remaining <= EPS {
                if self.best.as_ref().is_none_or(|(_, c)| cost < *c - 1e-12) {
                    self.best = Some((self.cur.clone(), cost));
                }
                return;
            }
            if k == self.order.len() || self.reach[k] + EPS < remaining {
                return;
            }
            let bound = cost + remaining * self.best_eff[k];
            if let Some((_, c)) = &self.best
                && bound >= *c - 1e-12
            {
                return;
            }
            let i = self.order[k];
            let p = self.pools[i];
            let need = ((remaining - EPS) / p.capacity).ceil().max(0.0) as u32;
            let top = p.cap.map_or(need, |c| c.min(need));
            for r in (0..=top).rev() {
                self.cur[i] = r;
                self.go(
                    k + 1,
                    remaining - f64::from(r) * p.capacity,
                    cost + f64::from(r) * p.price,
                );
                if self.nodes > NODE_LIMIT {
                    break;
                }
            }
            self.cur[i] = 0;
        }
    }
    let mut s = Search {
        pools,
        order: &order,
        best_eff: &best_eff,
        reach: &reach,
        cur: vec![0; pools.len()],
        best: None,
        nodes: 0,
    };
    s.go(0, demand, 0.0);
    let finished = s.nodes <= NODE_LIMIT;
    s.best.map(|(r, c)| (r, c, finished))
}

/// Computes the plan. Errors for inputs that cannot be planned at all (a
/// pool without a price); an SLO or demand nobody meets gives a plan whose
/// `infeasible` says why.
pub fn compute(inp: &PlanInputs) -> Result<Plan, BenchError> {
    let mut notes = Vec::new();
    let mut feasible: Vec<PoolPlan> = Vec::new();
    let mut excluded = Vec::new();
    let known: Vec<&str> = inp.prices.instances.keys().map(String::as_str).collect();
    for p in &inp.pools {
        let price = inp.prices.instances.get(&p.instance_type);
        let Some(price) = price else {
            return Err(BenchError::NoPrice {
                pool: p.name.clone(),
                instance_type: p.instance_type.clone(),
                prices: inp.prices_path.clone(),
                hint: format!(
                    "; add [instances.\"{}\"] with on_demand (and spot) $/hour (it prices: {})",
                    p.instance_type,
                    if known.is_empty() {
                        "nothing".into()
                    } else {
                        known.join(", ")
                    }
                ),
            });
        };
        let per_hour = match inp.capacity_type {
            CapacityType::OnDemand => price.on_demand,
            CapacityType::Spot => price.spot,
        };
        let Some(per_hour) = per_hour else {
            return Err(BenchError::NoPrice {
                pool: p.name.clone(),
                instance_type: p.instance_type.clone(),
                prices: inp.prices_path.clone(),
                hint: format!(
                    " for {} capacity; add {} to [instances.\"{}\"] or plan with the other --capacity-type",
                    inp.capacity_type.as_str(),
                    match inp.capacity_type {
                        CapacityType::OnDemand => "on_demand",
                        CapacityType::Spot => "spot",
                    },
                    p.instance_type
                ),
            });
        };
        let pods_per_node = price.pods_per_node.unwrap_or(1).max(1);
        let available = inp
            .max_replicas
            .get(&p.name)
            .copied()
            .or_else(|| price.max_nodes.map(|n| n.saturating_mul(pods_per_node)));

        let points: Vec<LevelPoint> = p
            .levels
            .iter()
            .map(|l| LevelPoint {
                throughput: l.throughput,
                p95: l.p95_s,
                error_rate: l.error_rate,
            })
            .collect();
        let Some(bp) = breaking_point(&points, inp.slo_p95, inp.max_error_rate) else {
            let best_p95 = p
                .levels
                .iter()
                .filter(|l| l.error_rate <= inp.max_error_rate)
                .filter_map(|l| l.p95_s)
                .fold(f64::INFINITY, f64::min);
            let reason = if best_p95.is_finite() {
                format!(
                    "its best p95 is {} s, over the SLO of {} s",
                    fmt_num(best_p95),
                    fmt_num(inp.slo_p95)
                )
            } else {
                format!(
                    "no measured level succeeded with at most {}% errors",
                    fmt_num(inp.max_error_rate * 100.0)
                )
            };
            excluded.push(Excluded {
                name: p.name.clone(),
                instance_type: p.instance_type.clone(),
                reason,
            });
            continue;
        };
        if available == Some(0) {
            excluded.push(Excluded {
                name: p.name.clone(),
                instance_type: p.instance_type.clone(),
                reason: "no replicas available (max_nodes or --max-replicas is 0)".into(),
            });
            continue;
        }
        let level = &p.levels[bp];
        let capacity = level.throughput;
        let p95 = level.p95_s.unwrap_or(f64::NAN);
        // Mean latency, or the p95 if a heavy tail put the mean above it,
        // so the backlog target stays under the SLO.
        let mean = level.mean_s.unwrap_or(p95).min(p95);
        let replica_hour = per_hour / f64::from(pods_per_node);
        let target = capacity * (1.0 - inp.headroom);
        feasible.push(PoolPlan {
            name: p.name.clone(),
            instance_type: p.instance_type.clone(),
            accelerator: p.accelerator.clone(),
            price_per_hour: per_hour,
            pods_per_node,
            capacity_level: level.label.clone(),
            capacity_images_per_s: capacity,
            p95_s: p95,
            mean_latency_s: mean,
            cost_per_1000_images: replica_hour / (capacity * 3600.0) * 1000.0,
            cost_per_1000_images_at_target: replica_hour / (target * 3600.0) * 1000.0,
            target_images_per_s: target,
            keda_target_backlog_seconds: (1.0 - inp.headroom) * mean,
            nodepool_weight: 0,
            weight: 0,
            fallback_rank: 0,
            planned_replicas: 0,
            max_replicas: 0,
            available_replicas: available,
            capacity_mode_target_images_per_s: 0.0,
        });
    }
    feasible.sort_by(|a, b| {
        a.cost_per_1000_images
            .total_cmp(&b.cost_per_1000_images)
            .then(a.p95_s.total_cmp(&b.p95_s))
            .then(a.name.cmp(&b.name))
    });

    let mut plan = Plan {
        generated_at: now_rfc3339(),
        tool_version: crate::result::TOOL_VERSION.into(),
        currency: inp.prices.currency.clone(),
        prices_source: inp.prices.source.clone(),
        slo_p95_s: inp.slo_p95,
        headroom: inp.headroom,
        capacity_type: inp.capacity_type,
        weights_mode: inp.weights,
        demand: inp.demand.clone(),
        pools: Vec::new(),
        excluded,
        mix: None,
        profile_cost: None,
        infeasible: None,
        notes: Vec::new(),
    };
    if feasible.is_empty() {
        plan.infeasible = Some(format!(
            "no pool meets p95 ≤ {} s (all {} measured pools are over it or failing)",
            fmt_num(inp.slo_p95),
            plan.excluded.len()
        ));
        plan.notes = notes;
        return Ok(plan);
    }

    let mix_pools: Vec<MixPool> = feasible
        .iter()
        .map(|p| MixPool {
            price: p.price_per_hour / f64::from(p.pods_per_node),
            capacity: p.target_images_per_s,
            cap: p.available_replicas,
        })
        .collect();
    let names: Vec<String> = feasible.iter().map(|p| p.name.clone()).collect();
    let mix_at = |demand: f64| -> Option<Mix> {
        let (reps, cost, proven) = cheapest_mix(&mix_pools, demand)?;
        let capacity: f64 = reps
            .iter()
            .zip(&mix_pools)
            .map(|(r, p)| f64::from(*r) * p.capacity)
            .sum();
        Some(Mix {
            demand_images_per_s: demand,
            replicas: names
                .iter()
                .zip(&reps)
                .filter(|(_, r)| **r > 0)
                .map(|(n, r)| (n.clone(), *r))
                .collect(),
            cost_per_hour: cost,
            capacity_images_per_s: capacity,
            cost_per_1000_images: if demand > 0.0 {
                cost / (demand * 3600.0) * 1000.0
            } else {
                0.0
            },
            proven_optimal: proven,
        })
    };
    let Some(mix) = mix_at(inp.demand.peak) else {
        let total: f64 = mix_pools
            .iter()
            .map(|p| p.cap.map_or(f64::INFINITY, |c| f64::from(c) * p.capacity))
            .sum();
        plan.infeasible = Some(format!(
            "the demand of {} images/s is more than every available replica together sustains within the SLO ({} images/s at the KEDA targets); raise max_nodes / --max-replicas, lower --headroom, or relax the SLO",
            fmt_num(inp.demand.peak),
            fmt_num(round(total, 3))
        ));
        plan.pools = feasible;
        plan.notes = notes;
        return Ok(plan);
    };
    if !mix.proven_optimal {
        notes.push(
            "the mix search hit its node limit: the mix is the best found, not proven cheapest"
                .into(),
        );
    }

    // Karpenter weights and the fallback order follow cost.
    let costs: Vec<f64> = feasible.iter().map(|p| p.cost_per_1000_images).collect();
    for (p, w) in feasible.iter_mut().zip(nodepool_weights(&costs)) {
        p.nodepool_weight = w;
    }
    for (i, p) in feasible.iter_mut().enumerate() {
        p.fallback_rank = i + 1;
        p.planned_replicas = mix.replicas.get(&p.name).copied().unwrap_or(0);
        let need = (inp.demand.peak / p.target_images_per_s).ceil().max(1.0);
        let mut max = if need >= f64::from(MAX_REPLICAS_LIMIT) {
            MAX_REPLICAS_LIMIT
        } else {
            need as u32
        };
        if let Some(a) = p.available_replicas {
            max = max.min(a);
        }
        p.max_replicas = max.max(p.planned_replicas).max(1);
        if need > f64::from(MAX_REPLICAS_LIMIT) {
            notes.push(format!(
                "{}: {} replicas would carry the peak alone; max_replicas capped at {MAX_REPLICAS_LIMIT}",
                p.name, need
            ));
        }
    }

    // Ingress weights for cost mode.
    let shares: Vec<f64> = match inp.weights {
        WeightMode::Mix => feasible
            .iter()
            .map(|p| f64::from(p.planned_replicas) * p.target_images_per_s)
            .collect(),
        WeightMode::InverseCost => feasible
            .iter()
            .map(|p| 1.0 / p.cost_per_1000_images)
            .collect(),
    };
    for (p, w) in feasible.iter_mut().zip(proportional_weights(
        &shares,
        WEIGHT_TOTAL,
        1,
        MAX_INGRESS_WEIGHT,
    )) {
        p.weight = w;
    }

    // Capacity mode: the seed's adjusted throughput.
    let mean_cap = feasible
        .iter()
        .map(|p| p.capacity_images_per_s)
        .sum::<f64>()
        / feasible.len() as f64;
    for p in &mut feasible {
        p.capacity_mode_target_images_per_s = mean_cap.min(p.capacity_images_per_s);
    }

    if !inp.demand.profile.is_empty() {
        let mut hours = 0.0;
        let mut images = 0.0;
        let mut cost = 0.0;
        for &(h, d) in &inp.demand.profile {
            hours += h;
            images += d * h * 3600.0;
            if let Some(m) = mix_at(d) {
                cost += m.cost_per_hour * h;
            }
        }
        plan.profile_cost = Some(ProfileCost {
            hours,
            images,
            cost,
            cost_per_1000_images: if images > 0.0 {
                cost / images * 1000.0
            } else {
                0.0
            },
        });
    }
    if feasible.len() > 5 {
        notes.push(format!(
            "{} pools are feasible; an ALB forward action takes at most 5 target groups, so render the cheapest 5 (the fragment lists all, cheapest first)",
            feasible.len()
        ));
    }
    plan.pools = feasible;
    plan.mix = Some(mix);
    plan.notes = notes;
    Ok(plan)
}

// ---------------------------------------------------------------------------
// Outputs

/// The TOML fragment `anyaccel deploy render` reads (see docs/bench.md).
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
                    p.keda_target_backlog_seconds,
                    p.nodepool_weight,
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
        let _ = writeln!(
            s,
            "- NodePool weights: 100 for the cheapest, 10 less per rank (equal costs share a weight). Ingress weights sum to 1000, each 1..=999; pools outside the mix keep 1 so they stay warm for fallback."
        );
        let _ = writeln!(
            s,
            "- max_replicas: enough for the pool to carry the peak alone (capacity-mode fallback), capped by what is available."
        );
        s
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodepool_weights_follow_rank_and_share_ties() {
        assert_eq!(nodepool_weights(&[1.0, 2.0, 3.0]), vec![100, 90, 80]);
        assert_eq!(nodepool_weights(&[1.0, 1.0, 3.0]), vec![100, 100, 80]);
        let many: Vec<f64> = (0..12).map(f64::from).collect();
        let w = nodepool_weights(&many);
        assert_eq!(w[0], 100);
        assert_eq!(w[11], 100 - 11 * 9);
        assert!(w.windows(2).all(|x| x[0] > x[1]));
        assert!(w.iter().all(|x| (1..=100).contains(x)));
    }

    #[test]
    fn proportional_weights_sum_and_bounds() {
        let w = proportional_weights(&[1.0, 1.0, 1.0], 1000, 1, 999);
        assert_eq!(w.iter().sum::<u32>(), 1000);
        assert_eq!(w, vec![334, 333, 333]);
        let w = proportional_weights(&[3.0, 0.0, 1.0], 1000, 1, 999);
        assert_eq!(w, vec![749, 1, 250]);
        // One pool alone is capped at the ALB maximum.
        assert_eq!(proportional_weights(&[5.0], 1000, 1, 999), vec![999]);
        assert_eq!(
            proportional_weights(&[1.0, 0.0, 0.0, 0.0], 1000, 1, 999),
            vec![997, 1, 1, 1]
        );
    }

    fn mp(price: f64, capacity: f64, cap: Option<u32>) -> MixPool {
        MixPool {
            price,
            capacity,
            cap,
        }
    }

    #[test]
    fn cheapest_mix_rounds_up_with_the_cheapest_filler() {
        // A: 1 $/h for 1 img/s; B: 0.6 $/h for 0.5 img/s (worse per image,
        // cheaper per replica). 2.5 img/s: 2 A + 1 B = 2.6 beats 3 A = 3.
        let pools = [mp(1.0, 1.0, None), mp(0.6, 0.5, None)];
        let (r, c, proven) = cheapest_mix(&pools, 2.5).unwrap();
        assert_eq!(r, vec![2, 1]);
        assert!((c - 2.6).abs() < 1e-9);
        assert!(proven);
        // Whole numbers: exactly 3 img/s is 3 A.
        let (r, _, _) = cheapest_mix(&pools, 3.0).unwrap();
        assert_eq!(r, vec![3, 0]);
    }

    #[test]
    fn cheapest_mix_respects_caps_and_says_when_impossible() {
        let pools = [mp(1.0, 1.0, Some(2)), mp(3.0, 1.0, Some(10))];
        let (r, c, _) = cheapest_mix(&pools, 5.0).unwrap();
        assert_eq!(r, vec![2, 3]);
        assert!((c - 11.0).abs() < 1e-9);
        assert!(cheapest_mix(&[mp(1.0, 1.0, Some(2))], 5.0).is_none());
        let (r, c, _) = cheapest_mix(&pools, 0.0).unwrap();
        assert_eq!(r, vec![0, 0]);
        assert_eq!(c, 0.0);
    }

    #[test]
    fn cheapest_mix_matches_brute_force() {
        let pools = [
            mp(0.7582, 1.4, None),
            mp(1.3438, 1.7333, None),
            mp(1.006, 1.2, None),
            mp(0.8048, 0.8133, None),
        ];
        for d in [0.3, 1.0, 2.9, 4.4, 7.0, 9.99] {
            let (_, c, _) = cheapest_mix(&pools, d).unwrap();
            let mut best = f64::INFINITY;
            for a in 0..10u32 {
                for b in 0..10u32 {
                    for e in 0..10u32 {
                        for f in 0..14u32 {
                            let cap = f64::from(a) * 1.4
                                + f64::from(b) * 1.7333
                                + f64::from(e) * 1.2
                                + f64::from(f) * 0.8133;
                            if cap + 1e-9 >= d {
                                let cost = f64::from(a) * 0.7582
                                    + f64::from(b) * 1.3438
                                    + f64::from(e) * 1.006
                                    + f64::from(f) * 0.8048;
                                best = best.min(cost);
                            }
                        }
                    }
                }
            }
            assert!((c - best).abs() < 1e-9, "demand {d}: {c} vs {best}");
        }
    }

    #[test]
    fn pool_caps_parse() {
        assert_eq!(parse_pool_cap("g5=3"), Ok(("g5".into(), 3)));
        assert!(parse_pool_cap("g5").is_err());
        assert!(parse_pool_cap("g5=x").is_err());
    }
}
