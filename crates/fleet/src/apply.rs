//! Writing the weights: a merge patch of the Ingress's one action
//! annotation, and a core/v1 Event on the Ingress saying why.
//!
//! API calls: `GET` and `PATCH` (merge) of the one Ingress, `POST` of Events
//! in the fleet namespace.

use std::future::Future;
use std::time::Duration;

use anyaccel_deploy::fleet::{FleetSpec, action_annotation, forward_action};
use k8s_openapi::api::core::v1::{Event as CoreEvent, EventSource, ObjectReference};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::observe::Now;

/// Field manager and event source of every write.
pub const COMPONENT: &str = "anyaccel-fleet";
/// Weights moved away from the plan (or between two non-plan splits).
pub const REASON_SHIFT: &str = "CapacityShift";
/// Weights are the plan's again.
pub const REASON_RESTORED: &str = "PlanRestored";

/// How long one Ingress or Event call may take: the client has no read
/// timeout (its watches are long-lived), and a hung call must not stall the
/// control loop.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed Ingress or Event call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

async fn bounded<T>(call: impl Future<Output = Result<T, kube::Error>>) -> Result<T, ApiError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ApiError::Timeout(CALL_TIMEOUT)),
    }
}

/// The Ingress and what its annotation holds, as last read or written.
pub struct IngressWriter {
    ingresses: Api<Ingress>,
    events: Api<CoreEvent>,
    namespace: String,
    name: String,
    key: String,
    services: Vec<String>,
    /// The annotation's parsed value, if any.
    value: Option<Value>,
    /// Target groups in the annotation's order, as spec indices, when it
    /// names exactly the spec's services (keeps diffs to the weights).
    order: Option<Vec<usize>>,
    uid: Option<String>,
}

impl IngressWriter {
    pub fn new(client: &Client, spec: &FleetSpec) -> Self {
        Self {
            ingresses: Api::namespaced(client.clone(), &spec.namespace),
            events: Api::namespaced(client.clone(), &spec.namespace),
            namespace: spec.namespace.clone(),
            name: spec.ingress.clone(),
            key: action_annotation(&spec.action),
            services: spec.pools.iter().map(|p| p.service.clone()).collect(),
            value: None,
            order: None,
            uid: None,
        }
    }

    /// Reads the Ingress; returns the weights it holds in the spec's order,
    /// or `None` when the annotation is missing or names other services.
    pub async fn read(&mut self) -> Result<Option<Vec<u16>>, ApiError> {
        let ingress = bounded(self.ingresses.get(&self.name)).await?;
        self.uid = ingress.metadata.uid.clone();
        let text = ingress
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(&self.key));
        self.value = text.and_then(|t| serde_json::from_str(t).ok());
        let parsed = self
            .value
            .as_ref()
            .and_then(|v| parse_weights(v, &self.services));
        self.order = parsed.as_ref().map(|(order, _)| order.clone());
        Ok(parsed.map(|(_, weights)| weights))
    }

    /// The annotation value for `weights` (spec order), in the order the
    /// Ingress has its target groups in, else the spec's.
    fn action(&self, weights: &[u16]) -> Value {
        let spec_order: Vec<usize> = (0..self.services.len()).collect();
        let order = self.order.as_ref().unwrap_or(&spec_order);
        forward_action(
            order
                .iter()
                .map(|&i| (self.services[i].as_str(), weights[i])),
        )
    }

    /// Whether the annotation differs from what `weights` would write.
    pub fn differs(&self, weights: &[u16]) -> bool {
        self.value.as_ref() != Some(&self.action(weights))
    }

    /// Merge-patches the annotation to `weights` (spec order).
    pub async fn write(&mut self, weights: &[u16]) -> Result<(), ApiError> {
        let value = self.action(weights);
        let mut annotations = serde_json::Map::new();
        // The annotation holds the action as a JSON string (Value's Display
        // is `serde_json::to_string`, which cannot fail for a Value).
        annotations.insert(self.key.clone(), Value::String(value.to_string()));
        let patch = json!({"metadata": {"annotations": annotations}});
        let params = PatchParams {
            field_manager: Some(COMPONENT.into()),
            ..Default::default()
        };
        let ingress = bounded(
            self.ingresses
                .patch(&self.name, &params, &Patch::Merge(&patch)),
        )
        .await?;
        self.uid = ingress.metadata.uid.or(self.uid.take());
        if self.order.is_none() {
            self.order = Some((0..self.services.len()).collect());
        }
        self.value = Some(value);
        Ok(())
    }

    /// Records a core/v1 Event on the Ingress.
    pub async fn record(
        &self,
        reason: &str,
        warning: bool,
        message: String,
        now: Now,
    ) -> Result<(), ApiError> {
        let time = Time(now.wall);
        let event = CoreEvent {
            metadata: ObjectMeta {
                // client-go's scheme: object name, a dot, a unique suffix.
                name: Some(format!("{}.{:x}", self.name, now.wall.as_nanosecond())),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("networking.k8s.io/v1".into()),
                kind: Some("Ingress".into()),
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                uid: self.uid.clone(),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(if warning { "Warning" } else { "Normal" }.into()),
            source: Some(EventSource {
                component: Some(COMPONENT.into()),
                host: None,
            }),
            reporting_component: Some(COMPONENT.into()),
            // The pod's name (Kubernetes sets HOSTNAME to it).
            reporting_instance: std::env::var("HOSTNAME").ok(),
            first_timestamp: Some(time.clone()),
            last_timestamp: Some(time),
            count: Some(1),
            ..Default::default()
        };
        bounded(self.events.create(&PostParams::default(), &event))
            .await
            .map(|_| ())
    }
}

/// The weights of an ALB forward action, in the spec's order, with the
/// annotation's target-group order; `None` unless it names each of
/// `services` exactly once with a weight in range.
pub fn parse_weights(action: &Value, services: &[String]) -> Option<(Vec<usize>, Vec<u16>)> {
    let groups = action.pointer("/forwardConfig/targetGroups")?.as_array()?;
    if groups.len() != services.len() {
        return None;
    }
    let mut weights = vec![None; services.len()];
    let mut order = Vec::with_capacity(groups.len());
    for g in groups {
        let service = g.get("serviceName")?.as_str()?;
        let i = services.iter().position(|s| s == service)?;
        let w = u16::try_from(g.get("weight")?.as_u64()?).ok()?;
        if weights[i].replace(w).is_some() {
            return None;
        }
        order.push(i);
    }
    let weights = weights.into_iter().collect::<Option<Vec<u16>>>()?;
    Some((order, weights))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services() -> Vec<String> {
        vec!["anyaccel-gpu".into(), "anyaccel-cpu".into()]
    }

    #[test]
    fn parses_what_forward_action_writes_in_any_order() {
        let v = forward_action([("anyaccel-cpu", 400), ("anyaccel-gpu", 600)]);
        assert_eq!(
            parse_weights(&v, &services()),
            Some((vec![1, 0], vec![600, 400]))
        );
    }

    #[test]
    fn rejects_other_services_duplicates_and_bad_weights() {
        let other = forward_action([("anyaccel-gpu", 600), ("anyaccel-x", 400)]);
        assert_eq!(parse_weights(&other, &services()), None);
        let dup = forward_action([("anyaccel-gpu", 600), ("anyaccel-gpu", 400)]);
        assert_eq!(parse_weights(&dup, &services()), None);
        let short = forward_action([("anyaccel-gpu", 600)]);
        assert_eq!(parse_weights(&short, &services()), None);
        let bad = json!({"forwardConfig": {"targetGroups": [
            {"serviceName": "anyaccel-gpu", "weight": -1},
            {"serviceName": "anyaccel-cpu", "weight": 1},
        ]}});
        assert_eq!(parse_weights(&bad, &services()), None);
    }
}
