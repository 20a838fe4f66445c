//! One `[[pools]]` entry: its hardware, replicas, artifact, sizes,
//! per-replica target, resources and timeouts.

use std::collections::{BTreeMap, BTreeSet};

use anyaccel_pipeline::ModelFamily;

use super::scaling::validate_trigger;
use super::{MAX_WEIGHT, Problems};
use crate::config::defaults::{default_redis_jobs, kind_defaults};
use crate::config::input::{Number, RawPool, RawScaling};
use crate::config::syntax::{is_dns_label, is_instance_family, is_label_value, is_quantity};
use crate::config::{
    AcceleratorKind, Artifact, CapacityType, CompileTarget, IngressMode, InstanceSelector,
    PodResources, Pool, PrometheusSignal, ScalingTrigger,
};

#[allow(clippy::too_many_arguments)]
pub(super) fn validate_pool(
    i: usize,
    rp: RawPool,
    artifact_names: &BTreeMap<String, usize>,
    artifacts: &[Artifact],
    default_scaling: Option<&RawScaling>,
    mode: IngressMode,
    redis: bool,
    p: &mut Problems,
) -> Option<Pool> {
    let at = format!("pools[{i}]");
    let before = p.0.len();

    let name = p
        .required(rp.name, &format!("{at}.name"))
        .unwrap_or_default();
    // Names end up in `anyaccel-<pool>` (Service, a DNS-1035 label) and in
    // KEDA's `keda-hpa-anyaccel-<pool>` (at most 63): 40 leaves room.
    if !name.is_empty() && !is_dns_label(&name, 40) {
        p.add(format!(
            "{at}.name {name:?} must be lowercase letters, digits and '-', starting with a letter, at most 40 characters"
        ));
    }

    let accelerator = match rp.accelerator.as_deref() {
        None => {
            p.add(format!(
                "{at}.accelerator is required; allowed: {}",
                AcceleratorKind::allowed_list()
            ));
            None
        }
        Some(a) => {
            let kind = AcceleratorKind::parse(a);
            if kind.is_none() {
                p.add(format!(
                    "{at}.accelerator {a:?} is unknown; allowed: {}",
                    AcceleratorKind::allowed_list()
                ));
            }
            kind
        }
    };

    let instances = match (rp.instance_families, rp.instance_types) {
        (Some(_), Some(_)) => {
            p.add(format!(
                "{at}: give instance_families or instance_types, not both"
            ));
            None
        }
        (None, None) => {
            p.add(format!(
                "{at}.instance_families (or instance_types) is required"
            ));
            None
        }
        (Some(f), None) => {
            check_instances(
                &f,
                &format!("{at}.instance_families"),
                false,
                accelerator,
                p,
            );
            Some(InstanceSelector::Families(f))
        }
        (None, Some(t)) => {
            check_instances(&t, &format!("{at}.instance_types"), true, accelerator, p);
            Some(InstanceSelector::Types(t))
        }
    };

    let capacity = match rp.capacity_type.as_deref() {
        None => CapacityType::OnDemand,
        Some(c) => CapacityType::parse(c).unwrap_or_else(|| {
            p.add(format!(
                "{at}.capacity_type {c:?} is unknown; allowed: {}",
                CapacityType::ALL.map(|c| c.as_str()).join(", ")
            ));
            CapacityType::OnDemand
        }),
    };

    let min = p.required(rp.min_replicas, &format!("{at}.min_replicas"));
    let max = p.required(rp.max_replicas, &format!("{at}.max_replicas"));
    if let Some(min) = min
        && min < 1
    {
        // Every pool sits behind the ALB with a share of the traffic; with no
        // replica that share would get 503s until KEDA woke the pool.
        p.add(format!(
            "{at}.min_replicas ({min}) must be at least 1: the ALB sends this pool its share of requests at all times"
        ));
    }
    if let Some(max) = max
        && !(1..=1000).contains(&max)
    {
        p.add(format!("{at}.max_replicas ({max}) must be within 1..=1000"));
    }
    if let (Some(min), Some(max)) = (min, max)
        && max < min
    {
        p.add(format!(
            "{at}.max_replicas ({max}) is below min_replicas ({min})"
        ));
    }

    let artifact = match rp.artifact.as_deref() {
        None => {
            p.add(format!(
                "{at}.artifact is required (name of an [[artifacts]] entry)"
            ));
            None
        }
        Some(a) => match artifact_names.get(a) {
            None => {
                let known: Vec<&str> = artifact_names.keys().map(String::as_str).collect();
                p.add(format!(
                    "{at}.artifact {a:?} names no [[artifacts]] entry; defined: {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ));
                None
            }
            Some(&idx) => {
                if let Some(kind) = accelerator {
                    let target = artifacts[idx].target;
                    if !kind.can_run(target) {
                        p.add(format!(
                            "{at}.artifact {a:?} is compiled for {}, which {kind} pools cannot run",
                            target.as_str()
                        ));
                    }
                }
                Some(idx)
            }
        },
    };

    let slo = p
        .required(rp.latency_slo_secs, &format!("{at}.latency_slo_secs"))
        .map(Number::get);
    if let Some(slo) = slo
        && !(slo > 0.0 && slo <= 3600.0)
    {
        p.add(format!(
            "{at}.latency_slo_secs ({slo}) must be within (0, 3600]"
        ));
    }

    // Trigger: the pool's own, else the top-level [scaling].
    let trigger = match rp.scaling.as_ref().or(default_scaling) {
        None => {
            p.add(format!(
                "{at}.scaling is required (or a top-level [scaling] default)"
            ));
            None
        }
        Some(s) => {
            let field = if rp.scaling.is_some() {
                format!("{at}.scaling")
            } else {
                "scaling".to_string()
            };
            validate_trigger(s, &field, p)
        }
    };

    // Per-replica target. Backlog: a replica holding B seconds of queued
    // work makes a new request wait about B seconds, so B must stay below
    // the SLO; half the SLO leaves room for the minutes a new replica takes.
    let scale_target = match &trigger {
        Some(ScalingTrigger::Prometheus {
            signal: PrometheusSignal::QueueDepth,
            ..
        }) => {
            if rp.target_backlog_secs.is_some() {
                p.add(format!(
                    "{at}.target_backlog_secs does not apply with signal = \"queue-depth\"; use target_queue_depth"
                ));
            }
            match rp.target_queue_depth.map(Number::get) {
                None => {
                    p.add(format!(
                        "{at}.target_queue_depth is required with signal = \"queue-depth\""
                    ));
                    1.0
                }
                Some(q) if !(q > 0.0 && q <= 10_000.0) => {
                    p.add(format!(
                        "{at}.target_queue_depth ({q}) must be within (0, 10000]"
                    ));
                    1.0
                }
                Some(q) => q,
            }
        }
        _ => {
            if rp.target_queue_depth.is_some() {
                p.add(format!(
                    "{at}.target_queue_depth applies only to a Prometheus trigger with signal = \"queue-depth\""
                ));
            }
            match (rp.target_backlog_secs.map(Number::get), slo) {
                (Some(t), slo) => {
                    if t <= 0.0 {
                        p.add(format!("{at}.target_backlog_secs ({t}) must be above 0"));
                    } else if let Some(slo) = slo
                        && t >= slo
                    {
                        p.add(format!(
                            "{at}.target_backlog_secs ({t}) must be below latency_slo_secs ({slo}): queued work adds to every request's latency"
                        ));
                    }
                    t
                }
                (None, Some(slo)) => slo / 2.0,
                (None, None) => 1.0,
            }
        }
    };

    let weight = match (mode, rp.weight) {
        (IngressMode::CostWeighted, None) => {
            p.add(format!(
                "{at}.weight is required with ingress.mode = \"cost-weighted\" (1..={MAX_WEIGHT}, e.g. from `anyaccel plan`)"
            ));
            1
        }
        (IngressMode::CostWeighted, Some(w)) => {
            if !(1..=i64::from(MAX_WEIGHT)).contains(&w) {
                p.add(format!(
                    "{at}.weight ({w}) must be within 1..={MAX_WEIGHT} (ALB target group weight; 0 would starve the pool)"
                ));
            }
            w.clamp(1, i64::from(MAX_WEIGHT)) as u16
        }
        // Even mode ignores weights, so a config can switch modes freely.
        (IngressMode::Even, _) => 1,
    };

    let defaults = accelerator.map(kind_defaults);
    let (cpu, memory, devices) = {
        let r = rp.resources;
        let (rc, rm, rd) = match r {
            Some(r) => (r.cpu, r.memory, r.devices),
            None => (None, None, None),
        };
        let cpu = rc.unwrap_or_else(|| defaults.as_ref().map_or("1", |d| d.cpu).to_string());
        let memory =
            rm.unwrap_or_else(|| defaults.as_ref().map_or("1Gi", |d| d.memory).to_string());
        if !is_quantity(&cpu) || cpu.starts_with('-') {
            p.add(format!(
                "{at}.resources.cpu {cpu:?} is not a Kubernetes quantity (e.g. \"3\" or \"3500m\")"
            ));
        }
        if !is_quantity(&memory) || memory.starts_with('-') {
            p.add(format!(
                "{at}.resources.memory {memory:?} is not a Kubernetes quantity (e.g. \"12Gi\")"
            ));
        }
        let devices = match (accelerator.and_then(AcceleratorKind::device_resource), rd) {
            (None, Some(d)) if d != 0 => {
                p.add(format!(
                    "{at}.resources.devices ({d}) applies only to nvidia and neuron pools"
                ));
                0
            }
            (None, _) => 0,
            (Some(_), Some(d)) if !(1..=16).contains(&d) => {
                p.add(format!(
                    "{at}.resources.devices ({d}) must be within 1..=16"
                ));
                1
            }
            (Some(_), Some(d)) => d as u32,
            (Some(_), None) => defaults.as_ref().map_or(1, |d| d.devices),
        };
        (cpu, memory, devices)
    };

    let sizes = validate_sizes(rp.sizes, artifact.map(|i| &artifacts[i]), &at, p);
    let model_cache_size = rp.model_cache_size.unwrap_or_else(|| {
        defaults
            .as_ref()
            .map_or("10Gi", |d| d.model_cache_size)
            .to_string()
    });
    if !is_quantity(&model_cache_size) || model_cache_size.starts_with('-') {
        p.add(format!(
            "{at}.model_cache_size {model_cache_size:?} is not a Kubernetes quantity (e.g. \"20Gi\")"
        ));
    }

    let mut secs = |value: Option<i64>, default: u32, field: &str, range: (u32, u32)| -> u32 {
        let v = value.unwrap_or(i64::from(default));
        if !(i64::from(range.0)..=i64::from(range.1)).contains(&v) {
            p.add(format!(
                "{at}.{field} ({v}) must be within {}..={}",
                range.0, range.1
            ));
            return default;
        }
        v as u32
    };
    let d = defaults.unwrap_or_else(|| kind_defaults(AcceleratorKind::CpuAmd64));
    let drain_timeout_secs = secs(
        rp.drain_timeout_secs,
        d.drain_timeout_secs,
        "drain_timeout_secs",
        (5, 3600),
    );
    let startup_timeout_secs = secs(
        rp.startup_timeout_secs,
        d.startup_timeout_secs,
        "startup_timeout_secs",
        (30, 7200),
    );
    let scale_down_window_secs = secs(
        rp.scale_down_window_secs,
        d.scale_down_window_secs,
        "scale_down_window_secs",
        (0, 3600),
    );
    let root_volume_gib = secs(
        rp.root_volume_gib,
        d.root_volume_gib,
        "root_volume_gib",
        (20, 16384),
    );
    let redis_jobs_target = match (redis, rp.target_redis_jobs) {
        (false, None) => None,
        (false, Some(_)) => {
            p.add(format!(
                "{at}.target_redis_jobs applies only with a [redis] section"
            ));
            None
        }
        (true, Some(jobs)) if !(1..=10_000).contains(&jobs) => {
            p.add(format!(
                "{at}.target_redis_jobs ({jobs}) must be within 1..=10000 (queued or running jobs per replica)"
            ));
            None
        }
        (true, Some(jobs)) => Some(jobs as u32),
        (true, None) => Some(default_redis_jobs(
            artifact.map_or(CompileTarget::OnnxFp32, |i| artifacts[i].target),
        )),
    };
    let node_pool_weight = rp.node_pool_weight.map(|w| {
        if !(1..=100).contains(&w) {
            p.add(format!(
                "{at}.node_pool_weight ({w}) must be within 1..=100 (Karpenter NodePool weight)"
            ));
        }
        w.clamp(1, 100) as u8
    });

    if p.0.len() > before {
        return None;
    }
    Some(Pool {
        name,
        accelerator: accelerator?,
        instances: instances?,
        capacity,
        min_replicas: min? as u32,
        max_replicas: max? as u32,
        artifact: artifact?,
        latency_slo_secs: slo?,
        scale_target,
        weight,
        trigger: trigger?,
        resources: PodResources {
            cpu,
            memory,
            devices,
        },
        model_cache_size,
        sizes: sizes?,
        drain_timeout_secs,
        startup_timeout_secs,
        scale_down_window_secs,
        root_volume_gib,
        node_pool_weight,
        redis_jobs_target,
    })
}

/// A pool's image sizes: the operator's list, checked against the artifact's
/// family, or the family's defaults. Static-shape artifacts (Neuron) serve
/// exactly the size they were compiled for, so they must name one.
fn validate_sizes(
    raw: Option<Vec<String>>,
    artifact: Option<&Artifact>,
    at: &str,
    p: &mut Problems,
) -> Option<Vec<(u32, u32)>> {
    let family = artifact.map_or(ModelFamily::StableDiffusion, Artifact::family);
    let before = p.0.len();
    let sizes: Vec<(u32, u32)> = match raw {
        None if artifact.is_some_and(|a| a.target() == CompileTarget::Neuron) => {
            vec![(family.native_size(), family.native_size())]
        }
        None => family.default_sizes(family.native_size()),
        Some(list) => {
            if list.is_empty() {
                p.add(format!(
                    "{at}.sizes is empty; list WxH sizes or leave it out"
                ));
            }
            let mut out: Vec<(u32, u32)> = Vec::new();
            for (j, s) in list.iter().enumerate() {
                let parsed = s
                    .split_once('x')
                    .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)));
                match parsed {
                    None => p.add(format!(
                        "{at}.sizes[{j}] {s:?} is not WIDTHxHEIGHT (e.g. 1024x1024)"
                    )),
                    Some((w, h)) => {
                        if let Err(m) = family.check_size(w, h) {
                            p.add(format!("{at}.sizes[{j}]: {m} ({family} artifact)"));
                        } else if out.contains(&(w, h)) {
                            p.add(format!("{at}.sizes[{j}] {s:?} is listed twice"));
                        } else {
                            out.push((w, h));
                        }
                    }
                }
            }
            out
        }
    };
    if let Some(a) = artifact
        && a.target() == CompileTarget::Neuron
        && sizes.len() != 1
    {
        p.add(format!(
            "{at}.sizes: a neuron artifact is compiled for one size; list exactly that one (got {})",
            sizes.len()
        ));
    }
    (p.0.len() == before).then_some(sizes)
}

fn check_instances(
    items: &[String],
    field: &str,
    are_types: bool,
    kind: Option<AcceleratorKind>,
    p: &mut Problems,
) {
    if items.is_empty() {
        p.add(format!("{field} must not be empty"));
    }
    let mut seen = BTreeSet::new();
    for (j, item) in items.iter().enumerate() {
        if !seen.insert(item) {
            p.add(format!("{field}[{j}] {item:?} is listed twice"));
        }
        let family = if are_types {
            match item.split_once('.') {
                Some((f, size)) if !size.is_empty() && is_label_value(size) => f,
                _ => {
                    p.add(format!(
                        "{field}[{j}] {item:?} is not an instance type (family.size, e.g. g5.xlarge)"
                    ));
                    continue;
                }
            }
        } else {
            item.as_str()
        };
        if !is_instance_family(family) {
            p.add(format!(
                "{field}[{j}] {item:?} is not an EC2 instance family (e.g. g5, inf2, c7g)"
            ));
            continue;
        }
        if let Some(kind) = kind
            && let Some(why) = family_mismatch(family, kind)
        {
            p.add(format!("{field}[{j}] {item:?}: {why}"));
        }
    }
}

/// Catches a family that cannot serve the pool's kind. Karpenter would only
/// find no instance to launch; this says why up front. Heuristic on EC2's
/// naming: GPU families start with g/p, Neuron with inf/trn, and Graviton
/// (arm64) families carry a `g` among the attribute letters after the
/// generation digit (c7g, m6gd, c7gn).
fn family_mismatch(family: &str, kind: AcceleratorKind) -> Option<String> {
    let neuron = family.starts_with("inf") || family.starts_with("trn");
    let gpu = !neuron && (family.starts_with('g') || family.starts_with('p'));
    let graviton = {
        let after_digits = family
            .trim_start_matches(|c: char| c.is_ascii_alphabetic())
            .trim_start_matches(|c: char| c.is_ascii_digit());
        after_digits
            .split('-')
            .next()
            .is_some_and(|attrs| attrs.contains('g'))
    };
    match kind {
        AcceleratorKind::Nvidia if !gpu => Some("not an NVIDIA GPU family (g*, p*)".into()),
        AcceleratorKind::Nvidia if graviton => {
            Some("a Graviton (arm64) GPU family; the nvidia image is built for amd64".into())
        }
        AcceleratorKind::Neuron if !neuron => {
            Some("not an Inferentia/Trainium family (inf*, trn*)".into())
        }
        AcceleratorKind::CpuAmd64 | AcceleratorKind::CpuArm64 if gpu || neuron => Some(format!(
            "an accelerator family; a {kind} pool would pay for a device it does not use"
        )),
        AcceleratorKind::CpuArm64 if !graviton => {
            Some("not a Graviton (arm64) family; use a cpu-amd64 pool".into())
        }
        AcceleratorKind::CpuAmd64 if graviton => {
            Some("a Graviton (arm64) family; use a cpu-arm64 pool".into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graviton_heuristic() {
        for (fam, kind, ok) in [
            ("c7g", AcceleratorKind::CpuArm64, true),
            ("m6gd", AcceleratorKind::CpuArm64, true),
            ("c7gn", AcceleratorKind::CpuArm64, true),
            ("c7i", AcceleratorKind::CpuArm64, false),
            ("m7i-flex", AcceleratorKind::CpuAmd64, true),
            ("c7g", AcceleratorKind::CpuAmd64, false),
            ("g5", AcceleratorKind::Nvidia, true),
            ("g6e", AcceleratorKind::Nvidia, true),
            ("p4d", AcceleratorKind::Nvidia, true),
            ("g5g", AcceleratorKind::Nvidia, false),
            ("inf2", AcceleratorKind::Neuron, true),
            ("trn1n", AcceleratorKind::Neuron, true),
            ("g5", AcceleratorKind::Neuron, false),
            ("inf2", AcceleratorKind::CpuAmd64, false),
        ] {
            assert_eq!(family_mismatch(fam, kind).is_none(), ok, "{fam} {kind}");
        }
    }
}
