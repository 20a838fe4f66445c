//! The TOML as serde reads it: every field optional and unknown keys
//! rejected, so validation can name each missing or wrong field itself.
//!
//! The type names appear in serde's messages ("expected struct RawCluster"),
//! so renaming one changes what an operator reads.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) cluster: Option<RawCluster>,
    pub(super) image: Option<RawImage>,
    pub(super) ingress: Option<RawIngress>,
    /// Default trigger for every pool without its own `[pools.scaling]`.
    pub(super) scaling: Option<RawScaling>,
    pub(super) device_plugins: Option<RawDevicePlugins>,
    pub(super) fleet: Option<RawFleet>,
    pub(super) c2pa: Option<RawC2pa>,
    pub(super) redis: Option<RawRedis>,
    #[serde(default)]
    pub(super) artifacts: Vec<RawArtifact>,
    #[serde(default)]
    pub(super) pools: Vec<RawPool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) name: Option<String>,
    pub(super) namespace: Option<String>,
    pub(super) node_role: Option<String>,
    pub(super) ami_alias: Option<String>,
    pub(super) hub_token_secret: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawImage {
    pub(super) repository: Option<String>,
    #[serde(default)]
    pub(super) tags: BTreeMap<String, String>,
    pub(super) pull_policy: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIngress {
    pub(super) mode: Option<String>,
    pub(super) scheme: Option<String>,
    pub(super) host: Option<String>,
    pub(super) certificate_arn: Option<String>,
    pub(super) class: Option<String>,
    pub(super) idle_timeout_secs: Option<i64>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScaling {
    pub(super) trigger: Option<String>,
    pub(super) server_address: Option<String>,
    pub(super) signal: Option<String>,
    pub(super) region: Option<String>,
    pub(super) role_arn: Option<String>,
    pub(super) stat_period_secs: Option<i64>,
    pub(super) collection_time_secs: Option<i64>,
    pub(super) publish: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDevicePlugins {
    pub(super) render: Option<bool>,
    pub(super) nvidia_image: Option<String>,
    pub(super) neuron_image: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawC2pa {
    pub(super) enabled: Option<bool>,
    pub(super) secret: Option<String>,
    pub(super) include_prompt: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedis {
    pub(super) endpoint: Option<String>,
    pub(super) tls: Option<bool>,
    pub(super) database: Option<i64>,
    pub(super) password_secret: Option<String>,
    pub(super) password_key: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    pub(super) controller: Option<bool>,
    pub(super) hold_down_secs: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawArtifact {
    pub(super) name: Option<String>,
    pub(super) repo: Option<String>,
    pub(super) target: Option<String>,
    pub(super) family: Option<String>,
    pub(super) source: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub(super) name: Option<String>,
    pub(super) accelerator: Option<String>,
    pub(super) instance_families: Option<Vec<String>>,
    pub(super) instance_types: Option<Vec<String>>,
    pub(super) capacity_type: Option<String>,
    pub(super) min_replicas: Option<i64>,
    pub(super) max_replicas: Option<i64>,
    pub(super) artifact: Option<String>,
    pub(super) sizes: Option<Vec<String>>,
    pub(super) latency_slo_secs: Option<Number>,
    pub(super) target_backlog_secs: Option<Number>,
    pub(super) target_queue_depth: Option<Number>,
    pub(super) target_redis_jobs: Option<i64>,
    pub(super) weight: Option<i64>,
    pub(super) scaling: Option<RawScaling>,
    pub(super) resources: Option<RawResources>,
    pub(super) model_cache_size: Option<String>,
    pub(super) drain_timeout_secs: Option<i64>,
    pub(super) startup_timeout_secs: Option<i64>,
    pub(super) scale_down_window_secs: Option<i64>,
    pub(super) root_volume_gib: Option<i64>,
    pub(super) node_pool_weight: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResources {
    pub(super) cpu: Option<String>,
    pub(super) memory: Option<String>,
    pub(super) devices: Option<i64>,
}

/// TOML keeps integers and floats apart; `latency_slo_secs = 8` should work.
#[derive(Deserialize, Clone, Copy)]
#[serde(untagged)]
pub(super) enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    pub(super) fn get(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}
