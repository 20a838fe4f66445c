//! What the renderer tells the `anyaccel fleet` controller, and the ALB
//! forward action both of them write.
//!
//! The renderer puts a [`FleetSpec`] as JSON into the controller's ConfigMap
//! (key [`FLEET_SPEC_KEY`]); the controller reads it at start-up. Both build
//! the Ingress's weighted action with [`forward_action`], so the weights the
//! controller writes are in exactly the shape the renderer wrote.

use serde::{Deserialize, Serialize};
use serde_json::json;

/// Version of the [`FleetSpec`] JSON; the controller refuses any other.
pub const FLEET_SPEC_VERSION: u32 = 1;
/// Key of the spec in the controller's ConfigMap, and its file name once
/// mounted.
pub const FLEET_SPEC_KEY: &str = "fleet.json";
/// The ALB weight range of one target group (AWS: 0..=999).
pub const ALB_MAX_WEIGHT: u16 = 999;

/// Everything the controller needs to know about the fleet it steers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    pub format_version: u32,
    /// Namespace of the pools' Deployments, ScaledObjects and the Ingress.
    pub namespace: String,
    /// The Ingress whose weighted action the controller rewrites.
    pub ingress: String,
    /// Name of the ALB action: the annotation key is
    /// [`action_annotation`]`(action)`.
    pub action: String,
    /// How long a pool must show no launch failure, with its ready replicas
    /// caught up, before it gets its planned weight back.
    pub hold_down_secs: u32,
    /// The plan the weights came from, when rendered with `--plan`.
    pub plan: Option<PlanStamp>,
    /// Pools in fallback order: when one cannot get capacity, its share goes
    /// to the first of the others that can.
    pub pools: Vec<FleetPool>,
}

/// Which plan a render used: also written as annotations on every object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanStamp {
    /// Hex SHA-256 of the plan file's bytes.
    pub sha256: String,
    /// The plan's `generated_at`.
    pub generated_at: String,
}

/// One pool as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetPool {
    /// The pool's name in the cluster config and the plan.
    pub name: String,
    /// Its Service: the ALB target group's `serviceName`.
    pub service: String,
    /// Its Deployment (ready and desired replicas).
    pub deployment: String,
    /// Its KEDA ScaledObject (the most replicas it may grow to).
    pub scaled_object: String,
    /// Its Karpenter NodePool: NodeClaims carry it in `karpenter.sh/nodepool`.
    pub node_pool: String,
    /// The weight the pool gets while every pool can grow (cost mode: the
    /// plan's; even mode: 1).
    pub weight: u16,
}

/// The Ingress annotation that holds the action named `action`.
pub fn action_annotation(action: &str) -> String {
    format!("alb.ingress.kubernetes.io/actions.{action}")
}

/// The ALB forward action splitting traffic across `(service, weight)`
/// target groups. Weights are relative; each must be 0..=[`ALB_MAX_WEIGHT`].
pub fn forward_action<'a>(targets: impl IntoIterator<Item = (&'a str, u16)>) -> serde_json::Value {
    let groups: Vec<serde_json::Value> = targets
        .into_iter()
        .map(|(service, weight)| {
            json!({
                "serviceName": service,
                "servicePort": "http",
                "weight": weight,
            })
        })
        .collect();
    json!({
        "type": "forward",
        "forwardConfig": {
            "targetGroups": groups,
            // No stickiness: each image request is independent, and
            // stickiness would defeat the weights.
            "targetGroupStickinessConfig": {"enabled": false},
        },
    })
}

impl FleetSpec {
    /// Parses and checks a spec; the message names what is wrong.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let spec: FleetSpec = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if spec.format_version != FLEET_SPEC_VERSION {
            return Err(format!(
                "format_version {} is not supported (this build reads {FLEET_SPEC_VERSION})",
                spec.format_version
            ));
        }
        if spec.pools.is_empty() {
            return Err("pools: at least one pool is required".into());
        }
        for (i, p) in spec.pools.iter().enumerate() {
            if p.weight > ALB_MAX_WEIGHT {
                return Err(format!(
                    "pools[{i}].weight: {} is above the ALB's {ALB_MAX_WEIGHT}",
                    p.weight
                ));
            }
        }
        if spec.pools.iter().all(|p| p.weight == 0) {
            return Err("pools: every weight is 0, so the ALB would route nowhere".into());
        }
        Ok(spec)
    }

    pub fn to_json(&self) -> String {
        // A struct of strings and integers always serializes.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
