//! Folds a plan into the raw cluster config before validation: the plan's
//! numbers fill the keys the config leaves out, and a key the config sets
//! to another value is a contradiction naming both files.

use crate::config::input::{Number, RawConfig, RawPool};
use crate::plan::{Plan, PlanPool};

/// Fills `raw` from `plan`; returns every contradiction found.
pub(super) fn apply(raw: &mut RawConfig, plan: &Plan, config: &str) -> Vec<String> {
    let mut out = Vec::new();
    let planned = plan.origin();
    let summary = &plan.file().plan;

    if let Some(mode) = raw.ingress.as_ref().and_then(|i| i.mode.as_deref())
        && mode != "cost-weighted"
    {
        out.push(format!(
            "ingress.mode = {mode:?} in {config} contradicts {planned}, whose ingress weights are by cost; drop ingress.mode (cost-weighted is the default) or render without --plan"
        ));
    }
    let default_signal = raw.scaling.as_ref().and_then(|s| s.signal.clone());

    for (i, rp) in raw.pools.iter_mut().enumerate() {
        let name = rp.name.clone().unwrap_or_default();
        let at = format!("pools[{i}] ({name:?})");
        let Some(pp) = plan.pool(&name) else {
            out.push(format!(
                "{at} in {config} is not in {planned}, which plans {:?}; a plan leaves out pools that miss its SLO or had no bench result: remove the pool, or bench it and re-plan",
                plan_names(plan)
            ));
            continue;
        };
        let mut key = |field: &str, ours: Option<String>, theirs: String| {
            if let Some(ours) = ours {
                out.push(format!(
                    "{at}.{field} = {ours} in {config}, but {planned} gives {name:?} {field} = {theirs}; drop the key from {config} to take the plan's"
                ));
            }
        };
        fill_int(&mut rp.weight, pp.weight, |o| {
            key("weight", o, pp.weight.to_string())
        });
        fill_int(&mut rp.node_pool_weight, pp.node_pool_weight, |o| {
            key("node_pool_weight", o, pp.node_pool_weight.to_string())
        });
        fill_int(&mut rp.max_replicas, pp.max_replicas, |o| {
            key("max_replicas", o, pp.max_replicas.to_string())
        });
        fill_number(&mut rp.target_backlog_secs, pp.target_backlog_secs, |o| {
            key("target_backlog_secs", o, pp.target_backlog_secs.to_string())
        });
        fill_number(&mut rp.latency_slo_secs, summary.latency_slo_secs, |o| {
            key(
                "latency_slo_secs",
                o,
                format!("{} (plan.latency_slo_secs)", summary.latency_slo_secs),
            )
        });

        let signal = rp
            .scaling
            .as_ref()
            .and_then(|s| s.signal.clone())
            .or_else(|| default_signal.clone());
        if signal.as_deref() == Some("queue-depth") || rp.target_queue_depth.is_some() {
            out.push(format!(
                "{at} scales on queue depth in {config}, but {planned}'s targets are backlog seconds; use signal = \"backlog-seconds\" (the default) with --plan"
            ));
        }
        if let Some(problem) = capacity_conflict(rp, &summary.capacity_type) {
            out.push(format!("{at}: {problem} ({config} vs {planned})"));
        }
        if let Some(problem) = instance_conflict(rp, pp) {
            out.push(format!("{at}: {problem} ({config} vs {planned})"));
        }
    }

    for pp in &plan.file().pools {
        if !raw
            .pools
            .iter()
            .any(|rp| rp.name.as_deref() == Some(&pp.name))
        {
            let ours: Vec<&str> = raw.pools.iter().filter_map(|p| p.name.as_deref()).collect();
            out.push(format!(
                "{planned} plans pool {:?}, which {config} does not define (its pools: {ours:?}); add it, or re-plan without it",
                pp.name
            ));
        }
    }
    out
}

fn plan_names(plan: &Plan) -> Vec<&str> {
    plan.file().pools.iter().map(|p| p.name.as_str()).collect()
}

/// Sets an absent integer key to the plan's value; reports one that differs.
fn fill_int(slot: &mut Option<i64>, planned: u32, conflict: impl FnOnce(Option<String>)) {
    match *slot {
        None => *slot = Some(i64::from(planned)),
        Some(v) if v == i64::from(planned) => {}
        Some(v) => conflict(Some(v.to_string())),
    }
}

fn fill_number(slot: &mut Option<Number>, planned: f64, conflict: impl FnOnce(Option<String>)) {
    match slot.map(Number::get) {
        None => *slot = Some(Number::Float(planned)),
        Some(v) if (v - planned).abs() <= 1e-9 * planned.abs().max(1.0) => {}
        Some(v) => conflict(Some(v.to_string())),
    }
}

/// The plan priced one purchase option; the pool must be allowed to buy it.
fn capacity_conflict(rp: &RawPool, priced: &str) -> Option<String> {
    let ours = rp.capacity_type.as_deref().unwrap_or("on-demand");
    let allowed = match ours {
        "spot-or-on-demand" => true,
        other => other == priced,
    };
    (!allowed).then(|| {
        format!(
            "capacity_type = {ours:?}, but the plan was priced for {priced} capacity; re-plan with --capacity-type {ours} or allow {priced} here"
        )
    })
}

/// The plan measured one instance type; the pool's NodePool must offer it.
fn instance_conflict(rp: &RawPool, pp: &PlanPool) -> Option<String> {
    let it = &pp.instance_type;
    let family = it.split('.').next().unwrap_or(it);
    if let Some(types) = &rp.instance_types
        && !types.iter().any(|t| t == it)
    {
        return Some(format!(
            "instance_types = {types:?}, but the plan measured {it}"
        ));
    }
    if let Some(families) = &rp.instance_families
        && !families.iter().any(|f| f == family)
    {
        return Some(format!(
            "instance_families = {families:?}, but the plan measured {it} (family {family})"
        ));
    }
    None
}
