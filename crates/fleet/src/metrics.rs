//! The controller's Prometheus series and its HTTP endpoints: `/metrics`,
//! `/health/ready` (503 with the reason until the observations are complete
//! and the last API call of each kind succeeded) and `/health/live`.

use std::sync::{Arc, Mutex};

use anyaccel_metrics::{fleet as names, labels};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::decide::{Decision, PoolState};

type OneLabel = [(&'static str, String); 1];

pub struct Metrics {
    registry: Registry,
    weight: Family<OneLabel, Gauge>,
    planned: Family<OneLabel, Gauge>,
    constrained: Family<OneLabel, Gauge>,
    ready: Family<OneLabel, Gauge>,
    desired: Family<OneLabel, Gauge>,
    updates: Counter,
    api_errors: Family<OneLabel, Counter>,
    pools: Vec<String>,
    /// `None` when ready; else why not.
    not_ready: Mutex<Option<String>>,
}

/// A counter's registered name: the client library appends `_total` itself.
fn counter_name(full: &str) -> &str {
    full.strip_suffix("_total").unwrap_or(full)
}

impl Metrics {
    /// `pools`: the pools' names, in the spec's order.
    pub fn new(pools: Vec<String>, planned: &[u16]) -> Self {
        let mut registry = Registry::default();
        let m = Self {
            weight: Family::default(),
            planned: Family::default(),
            constrained: Family::default(),
            ready: Family::default(),
            desired: Family::default(),
            updates: Counter::default(),
            api_errors: Family::default(),
            pools,
            not_ready: Mutex::new(Some("starting".into())),
            registry: Registry::default(),
        };
        let gauges = [
            (
                names::WEIGHT,
                "Weight the Ingress gives the pool now",
                &m.weight,
            ),
            (
                names::PLANNED_WEIGHT,
                "The plan's weight for the pool",
                &m.planned,
            ),
            (
                names::POOL_CONSTRAINED,
                "1 while the pool cannot get capacity (within its hold-down)",
                &m.constrained,
            ),
            (
                names::READY_REPLICAS,
                "Ready replicas of the pool's Deployment",
                &m.ready,
            ),
            (
                names::DESIRED_REPLICAS,
                "Replicas the pool's Deployment wants",
                &m.desired,
            ),
        ];
        for (name, help, family) in gauges {
            registry.register(name, help, family.clone());
        }
        registry.register(
            counter_name(names::WEIGHT_UPDATES_TOTAL),
            "Writes of the Ingress's weights",
            m.updates.clone(),
        );
        registry.register(
            counter_name(names::API_ERRORS_TOTAL),
            "Failed Kubernetes API calls by operation",
            m.api_errors.clone(),
        );
        for (pool, &w) in m.pools.iter().zip(planned) {
            m.planned
                .get_or_create(&label(labels::POOL, pool))
                .set(i64::from(w));
        }
        Self { registry, ..m }
    }

    pub fn observe(&self, pools: &[PoolState], decision: &Decision) {
        for ((name, p), &c) in self.pools.iter().zip(pools).zip(&decision.constrained) {
            let l = label(labels::POOL, name);
            self.ready.get_or_create(&l).set(i64::from(p.ready));
            self.desired.get_or_create(&l).set(i64::from(p.desired));
            self.constrained.get_or_create(&l).set(i64::from(c));
        }
    }

    /// The weights the Ingress holds now.
    pub fn weights(&self, weights: &[u16]) {
        for (name, &w) in self.pools.iter().zip(weights) {
            self.weight
                .get_or_create(&label(labels::POOL, name))
                .set(i64::from(w));
        }
    }

    pub fn weights_written(&self) {
        self.updates.inc();
    }

    pub fn api_error(&self, operation: &'static str) {
        self.api_errors
            .get_or_create(&label(names::OPERATION, operation))
            .inc();
    }

    pub fn set_ready(&self, not_ready: Option<String>) {
        if let Ok(mut r) = self.not_ready.lock() {
            *r = not_ready;
        }
    }

    fn not_ready(&self) -> Option<String> {
        match self.not_ready.lock() {
            Ok(r) => r.clone(),
            Err(_) => Some("readiness state poisoned".into()),
        }
    }

    fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

fn label(key: &'static str, value: &str) -> OneLabel {
    [(key, value.to_string())]
}

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/health/ready", get(ready))
        .route("/health/live", get(|| async { "live\n" }))
        .with_state(metrics)
}

async fn scrape(State(m): State<Arc<Metrics>>) -> Response {
    match m.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn ready(State(m): State<Arc<Metrics>>) -> Response {
    match m.not_ready() {
        None => (StatusCode::OK, "ready\n".to_string()).into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}
