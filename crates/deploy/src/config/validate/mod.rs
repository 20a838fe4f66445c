//! Turns the `Raw*` input into the public types. Every check here names its
//! field, and problems are collected so one run reports them all; a pool
//! entry and its scaling trigger are checked in the submodules.

mod pool;
mod redis;
mod scaling;

use std::collections::{BTreeMap, BTreeSet};

use anyaccel_pipeline::ModelFamily;

use crate::config::defaults::{
    DEFAULT_AMI_ALIAS, DEFAULT_NEURON_PLUGIN_IMAGE, DEFAULT_NVIDIA_PLUGIN_IMAGE,
};
use crate::config::input::{RawC2pa, RawConfig, RawFleet, RawIngress};
use crate::config::syntax::{
    is_arn, is_dns_label, is_dns_subdomain, is_hostname, is_image_repository, is_image_tag,
    is_model_location,
};
use crate::config::{
    AcceleratorKind, Artifact, C2paSigning, ClusterConfig, CompileTarget, DevicePlugins,
    FleetController, IngressConfig, IngressMode, IngressScheme,
};
use crate::error::DeployError;
use pool::validate_pool;
use redis::validate_redis;

/// ALB forward actions take at most five target groups.
pub const MAX_POOLS: usize = 5;
/// ALB target group weights are 0..=999.
pub const MAX_WEIGHT: u16 = crate::fleet::ALB_MAX_WEIGHT;

/// Collects problems so that every one of them is reported at once.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, msg: impl Into<String>) {
        self.0.push(msg.into());
    }

    fn required<T>(&mut self, value: Option<T>, field: &str) -> Option<T> {
        if value.is_none() {
            self.add(format!("{field} is required"));
        }
        value
    }
}

pub(super) fn validate(raw: RawConfig) -> Result<ClusterConfig, DeployError> {
    let mut p = Problems::default();

    // [cluster]
    let (cluster_name, namespace, node_role, ami_alias, hub_token_secret) = match raw.cluster {
        None => {
            p.add("[cluster] is required (name, namespace)");
            Default::default()
        }
        Some(c) => {
            let name = p.required(c.name, "cluster.name").unwrap_or_default();
            if !name.is_empty() && !is_dns_label(&name, 100) {
                p.add(format!(
                    "cluster.name {name:?} must be lowercase letters, digits and '-', starting with a letter"
                ));
            }
            let namespace = c.namespace.unwrap_or_else(|| "anyaccel".to_string());
            if !is_dns_label(&namespace, 63) {
                p.add(format!(
                    "cluster.namespace {namespace:?} is not a valid namespace name (lowercase letters, digits, '-', at most 63)"
                ));
            }
            let node_role = c
                .node_role
                .unwrap_or_else(|| format!("KarpenterNodeRole-{name}"));
            if node_role.is_empty() || node_role.starts_with("arn:") {
                p.add(format!(
                    "cluster.node_role {node_role:?} must be an IAM role name, not an ARN (Karpenter's EC2NodeClass.spec.role)"
                ));
            }
            let ami_alias = c.ami_alias.unwrap_or_else(|| DEFAULT_AMI_ALIAS.to_string());
            check_ami_alias(&ami_alias, &mut p);
            if let Some(s) = &c.hub_token_secret
                && !is_dns_subdomain(s)
            {
                p.add(format!(
                    "cluster.hub_token_secret {s:?} is not a valid Secret name"
                ));
            }
            (name, namespace, node_role, ami_alias, c.hub_token_secret)
        }
    };

    // [image]
    let mut image_tags = BTreeMap::new();
    let (image_repository, pull_policy) = match raw.image {
        None => {
            p.add("[image] is required (repository and tags per accelerator kind)");
            (String::new(), String::new())
        }
        Some(img) => {
            let repo = p
                .required(img.repository, "image.repository")
                .unwrap_or_default();
            if !repo.is_empty() && !is_image_repository(&repo) {
                p.add(format!(
                    "image.repository {repo:?} must be a lowercase registry/path without a tag or digest (tags go in [image.tags])"
                ));
            }
            for (key, tag) in img.tags {
                match AcceleratorKind::parse(&key) {
                    None => p.add(format!(
                        "image.tags.{key}: unknown accelerator kind; allowed: {}",
                        AcceleratorKind::allowed_list()
                    )),
                    Some(kind) => {
                        if !is_image_tag(&tag) {
                            p.add(format!(
                                "image.tags.{key} {tag:?} is not a valid image tag ([A-Za-z0-9_.-], at most 128, not starting with '.' or '-')"
                            ));
                        }
                        image_tags.insert(kind, tag);
                    }
                }
            }
            let pull = img.pull_policy.unwrap_or_else(|| "IfNotPresent".into());
            if !["Always", "IfNotPresent", "Never"].contains(&pull.as_str()) {
                p.add(format!(
                    "image.pull_policy {pull:?} must be one of Always, IfNotPresent, Never"
                ));
            }
            (repo, pull)
        }
    };

    // [ingress]
    let ingress = validate_ingress(raw.ingress.unwrap_or_default(), &mut p);

    // [device_plugins]
    let dp = raw.device_plugins.unwrap_or_default();
    let device_plugins = DevicePlugins {
        render: dp.render.unwrap_or(true),
        nvidia_image: dp
            .nvidia_image
            .unwrap_or_else(|| DEFAULT_NVIDIA_PLUGIN_IMAGE.into()),
        neuron_image: dp
            .neuron_image
            .unwrap_or_else(|| DEFAULT_NEURON_PLUGIN_IMAGE.into()),
    };
    for (field, image) in [
        ("device_plugins.nvidia_image", &device_plugins.nvidia_image),
        ("device_plugins.neuron_image", &device_plugins.neuron_image),
    ] {
        if image.is_empty() || image.chars().any(char::is_whitespace) {
            p.add(format!("{field} {image:?} is not an image reference"));
        }
    }

    // [[artifacts]]
    let mut artifacts = Vec::new();
    let mut artifact_names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, a) in raw.artifacts.into_iter().enumerate() {
        let at = format!("artifacts[{i}]");
        let name = p
            .required(a.name, &format!("{at}.name"))
            .unwrap_or_default();
        if !name.is_empty() {
            if !is_dns_label(&name, 40) {
                p.add(format!(
                    "{at}.name {name:?} must be lowercase letters, digits and '-', starting with a letter, at most 40 characters"
                ));
            }
            if let Some(first) = artifact_names.insert(name.clone(), i) {
                p.add(format!(
                    "{at}.name: duplicate artifact name {name:?} (also artifacts[{first}])"
                ));
            }
        }
        let repo = p
            .required(a.repo, &format!("{at}.repo"))
            .unwrap_or_default();
        if !repo.is_empty() && !is_model_location(&repo) {
            p.add(format!(
                "{at}.repo {repo:?} must be a Hub repo id (owner/name) or an absolute folder"
            ));
        }
        let target = match a.target.as_deref() {
            None => {
                p.add(format!("{at}.target is required"));
                CompileTarget::OnnxFp32
            }
            Some(t) => CompileTarget::parse(t).unwrap_or_else(|| {
                p.add(format!(
                    "{at}.target {t:?} is unknown; allowed: {}",
                    CompileTarget::ALL.map(|t| t.as_str()).join(", ")
                ));
                CompileTarget::OnnxFp32
            }),
        };
        let family = match a.family.as_deref() {
            None => ModelFamily::StableDiffusion,
            Some(f) => ModelFamily::parse(f).unwrap_or_else(|| {
                p.add(format!(
                    "{at}.family {f:?} is unknown; allowed: {}",
                    ModelFamily::ALL.map(|f| f.name()).join(", ")
                ));
                ModelFamily::StableDiffusion
            }),
        };
        if let Some(src) = &a.source
            && !is_model_location(src)
        {
            p.add(format!(
                "{at}.source {src:?} must be a Hub model id (owner/name) or an absolute folder"
            ));
        }
        if a.source.is_some() && repo.starts_with('/') {
            p.add(format!(
                "{at}.repo {repo:?}: a compiled artifact is pushed to a Hub repo, not a folder (pods cannot see the Job's disk)"
            ));
        }
        artifacts.push(Artifact {
            name,
            repo,
            target,
            family,
            source: a.source,
        });
    }
    if artifacts.iter().any(|a| a.source.is_some()) && hub_token_secret.is_none() {
        p.add("cluster.hub_token_secret is required: a compile Job pushes its artifact to the Hub");
    }

    // [redis]
    let redis_given = raw.redis.is_some();
    let redis = raw.redis.and_then(|r| validate_redis(r, &mut p));

    // [[pools]]
    let default_scaling = raw.scaling;
    let mut pools = Vec::new();
    let mut pool_names: BTreeMap<String, usize> = BTreeMap::new();
    if raw.pools.is_empty() {
        p.add("at least one [[pools]] entry is required");
    }
    if raw.pools.len() > MAX_POOLS {
        p.add(format!(
            "pools: {} pools given, but an ALB forward action splits traffic across at most {MAX_POOLS} target groups",
            raw.pools.len()
        ));
    }
    // Artifacts referenced by any pool, valid or not, so one broken pool
    // does not also report its artifact as unused.
    let mut referenced = BTreeSet::new();
    for (i, rp) in raw.pools.into_iter().enumerate() {
        if let Some(name) = &rp.name
            && let Some(first) = pool_names.insert(name.clone(), i)
        {
            p.add(format!(
                "pools[{i}].name: duplicate pool name {name:?} (also pools[{first}])"
            ));
        }
        if let Some(a) = &rp.artifact {
            referenced.insert(a.clone());
        }
        if let Some(pool) = validate_pool(
            i,
            rp,
            &artifact_names,
            &artifacts,
            default_scaling.as_ref(),
            ingress.mode,
            redis_given,
            &mut p,
        ) {
            pools.push(pool);
        }
    }

    // NodePool names are `<namespace>-<pool>` and appear as the value of
    // the `karpenter.sh/nodepool` node label (at most 63 characters).
    for (i, pool) in pools.iter().enumerate() {
        let len = namespace.len() + 1 + pool.name.len();
        if len > 63 {
            p.add(format!(
                "pools[{i}].name {:?}: with namespace {namespace:?} the NodePool name is {len} characters; at most 63",
                pool.name
            ));
        }
    }
    // Every kind a pool uses needs an image tag.
    let mut reported = BTreeSet::new();
    for (i, pool) in pools.iter().enumerate() {
        if !image_tags.contains_key(&pool.accelerator) && reported.insert(pool.accelerator) {
            p.add(format!(
                "image.tags.{kind} is missing: pools[{i}] ({name}) runs on {kind}",
                kind = pool.accelerator,
                name = pool.name
            ));
        }
    }
    // Every artifact is served by some pool: the compile Job runs on that
    // pool's nodes, and an unused artifact is most likely a typo.
    for (i, a) in artifacts.iter().enumerate() {
        if !a.name.is_empty() && !referenced.contains(&a.name) {
            p.add(format!(
                "artifacts[{i}] ({}) is not used by any pool",
                a.name
            ));
        }
    }

    let fleet = validate_fleet(raw.fleet.unwrap_or_default(), pools.len(), &mut p);
    let c2pa = validate_c2pa(raw.c2pa.unwrap_or_default(), &mut p);
    if fleet.enabled && !image_tags.contains_key(&AcceleratorKind::CpuAmd64) {
        p.add(
            "image.tags.cpu-amd64 is required for the fleet controller, which runs the CPU image (or set [fleet] controller = false)",
        );
    }

    if !p.0.is_empty() {
        return Err(DeployError::Invalid { problems: p.0 });
    }
    Ok(ClusterConfig {
        cluster_name,
        namespace,
        node_role,
        ami_alias,
        hub_token_secret,
        image_repository,
        image_tags,
        pull_policy,
        ingress,
        device_plugins,
        artifacts,
        fallback_order: (0..pools.len()).collect(),
        pools,
        fleet,
        c2pa,
        redis,
        plan: None,
    })
}

fn validate_c2pa(raw: RawC2pa, p: &mut Problems) -> C2paSigning {
    if let Some(s) = &raw.secret
        && !is_dns_subdomain(s)
    {
        p.add(format!("c2pa.secret {s:?} is not a valid Secret name"));
    }
    if raw.enabled == Some(false) {
        for (key, set) in [
            ("secret", raw.secret.is_some()),
            ("include_prompt", raw.include_prompt.is_some()),
        ] {
            if set {
                p.add(format!("c2pa.{key} does nothing with c2pa.enabled = false"));
            }
        }
        return C2paSigning::Off;
    }
    C2paSigning::On {
        secret: raw.secret,
        include_prompt: raw.include_prompt.unwrap_or(false),
    }
}

/// Default quiet time before a pool short of capacity gets its weight back:
/// longer than Karpenter's launch retries, short next to a traffic day.
const DEFAULT_HOLD_DOWN_SECS: i64 = 600;

fn validate_fleet(raw: RawFleet, pools: usize, p: &mut Problems) -> FleetController {
    let hold = raw.hold_down_secs.unwrap_or(DEFAULT_HOLD_DOWN_SECS);
    if !(30..=86_400).contains(&hold) {
        p.add(format!(
            "fleet.hold_down_secs ({hold}) must be within 30..=86400"
        ));
    }
    FleetController {
        // One pool has no one to hand traffic to.
        enabled: raw.controller.unwrap_or(true) && pools > 1,
        hold_down_secs: hold.clamp(30, 86_400) as u32,
    }
}

fn validate_ingress(raw: RawIngress, p: &mut Problems) -> IngressConfig {
    let mode = match raw.mode.as_deref() {
        None | Some("cost-weighted") => IngressMode::CostWeighted,
        Some("even") => IngressMode::Even,
        Some(other) => {
            p.add(format!(
                "ingress.mode {other:?} is unknown; allowed: cost-weighted, even"
            ));
            IngressMode::CostWeighted
        }
    };
    // Internal by default: exposing an image generator to the internet is a
    // decision to write down, not a default.
    let scheme = match raw.scheme.as_deref() {
        None | Some("internal") => IngressScheme::Internal,
        Some("internet-facing") => IngressScheme::InternetFacing,
        Some(other) => {
            p.add(format!(
                "ingress.scheme {other:?} is unknown; allowed: internal, internet-facing"
            ));
            IngressScheme::Internal
        }
    };
    if let Some(h) = &raw.host
        && !is_hostname(h)
    {
        p.add(format!("ingress.host {h:?} is not a DNS name"));
    }
    if let Some(arn) = &raw.certificate_arn
        && !is_arn(arn, "acm", "certificate/")
    {
        p.add(format!(
            "ingress.certificate_arn {arn:?} is not an ACM certificate ARN (arn:aws:acm:REGION:ACCOUNT:certificate/ID)"
        ));
    }
    let class = raw.class.unwrap_or_else(|| "alb".into());
    if !is_dns_subdomain(&class) {
        p.add(format!(
            "ingress.class {class:?} is not a valid IngressClass name"
        ));
    }
    // The ALB closes a connection idle this long; an image that takes longer
    // to generate would be cut off. ALB allows 1..=4000.
    let idle = raw.idle_timeout_secs.unwrap_or(180);
    if !(1..=4000).contains(&idle) {
        p.add(format!(
            "ingress.idle_timeout_secs ({idle}) must be within 1..=4000 (ALB limit)"
        ));
    }
    IngressConfig {
        mode,
        scheme,
        host: raw.host,
        certificate_arn: raw.certificate_arn,
        class,
        idle_timeout_secs: idle.clamp(1, 4000) as u32,
    }
}

fn check_ami_alias(alias: &str, p: &mut Problems) {
    // EC2NodeClass allows other families; this renderer's pools rely on
    // AL2023's NVIDIA and Neuron variants, so only al2023 is accepted.
    match alias.split_once('@') {
        Some(("al2023", version))
            if version == "latest"
                || (version.starts_with('v')
                    && version.len() > 1
                    && version[1..].chars().all(|c| c.is_ascii_digit())) => {}
        _ => p.add(format!(
            "cluster.ami_alias {alias:?} must be \"al2023@latest\" or \"al2023@vYYYYMMDD\""
        )),
    }
}
