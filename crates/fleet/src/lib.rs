//! `anyaccel fleet`: keeps the ALB's per-pool traffic weights equal to what
//! each accelerator pool can actually serve now.
//!
//! The renderer (`anyaccel deploy render`) writes the plan's weights into the
//! Ingress's weighted forward action and a [`FleetSpec`] for this controller.
//! When Karpenter cannot launch nodes for a pool (insufficient capacity), the
//! pool keeps only the share of its weight its ready replicas can serve and
//! the rest moves to the next pool in the plan's fallback order; once the
//! pool has had no launch failure for the hold-down and its replicas caught
//! up, the plan's weights come back. See `docs/fleet.md`.
//!
//! Kubernetes API calls, and nothing else (the rendered RBAC grants these):
//! - fleet namespace: list/watch `apps/v1` Deployments and `keda.sh/v1alpha1`
//!   ScaledObjects; list/watch core/v1 Events (reason
//!   `InsufficientCapacityError`); get and merge-patch the one
//!   `networking.k8s.io/v1` Ingress; create core/v1 Events on it;
//! - cluster-wide: list/watch `karpenter.sh/v1` NodeClaims (label
//!   `karpenter.sh/nodepool` in the fleet's NodePools);
//! - namespace `default`: list/watch core/v1 Events (events about
//!   cluster-scoped NodeClaims are recorded there).
//!
//! On any API error the weights in place stay as they are: nothing is
//! written until every watcher has listed again, the error is counted in
//! `anyaccel_fleet_api_errors_total{operation}`, logged, and
//! `/health/ready` answers 503 with the reason until the next success.

mod apply;
mod decide;
mod metrics;
mod observe;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyaccel_deploy::fleet::FleetSpec;
use kube::Client;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::apply::{ApiError, IngressWriter, REASON_RESTORED, REASON_SHIFT};
use crate::decide::{Decider, Decision, PoolState};
use crate::metrics::Metrics;
use crate::observe::{Now, Observations, RetryBackoff, Update};

#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// The fleet spec the renderer writes (its ConfigMap's `fleet.json`).
    #[arg(long, env = "ANYACCEL_FLEET_SPEC")]
    pub spec: PathBuf,
    /// Where to serve /metrics and /health/ready.
    #[arg(long, env = "ANYACCEL_FLEET_LISTEN", default_value = "0.0.0.0:9090")]
    pub listen: SocketAddr,
    /// Kubernetes API URL, unauthenticated (e.g. `kubectl proxy`'s
    /// http://127.0.0.1:8001); default: in-cluster credentials, else KUBECONFIG.
    #[arg(long, env = "ANYACCEL_FLEET_API_SERVER")]
    pub api_server: Option<String>,
    /// Seconds a pool must show no launch failure, with its replicas caught
    /// up, before it gets its planned weight back [default: the spec's].
    #[arg(long, env = "ANYACCEL_FLEET_HOLD_DOWN_SECS", value_parser = clap::value_parser!(u32).range(1..))]
    pub hold_down_secs: Option<u32>,
    /// Seconds between re-reads of the Ingress (to notice someone else
    /// rewriting the weights) and recomputations without any change.
    #[arg(long, env = "ANYACCEL_FLEET_RESYNC_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub resync_secs: u64,
}

/// Why the controller could not start or stopped. Each message carries its
/// cause (so there is no separate `source`).
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("reading the fleet spec {path}: {error}")]
    ReadSpec {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("fleet spec {path}: {message}")]
    Spec { path: PathBuf, message: String },
    #[error("--api-server {url:?}: {message}")]
    ApiServer { url: String, message: String },
    #[error("finding the Kubernetes API (in-cluster, else KUBECONFIG): {0}")]
    Config(kube::config::InferConfigError),
    #[error("building the Kubernetes client: {0}")]
    Client(kube::Error),
    #[error("listening on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("serving /metrics: {0}")]
    Serve(std::io::Error),
    #[error("every watcher stopped")]
    WatchersStopped,
}

/// Runs the controller until SIGTERM or Ctrl-C, on its own runtime.
pub fn run(args: &FleetArgs) -> Result<(), FleetError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(FleetError::Runtime)?;
    runtime.block_on(async {
        let controller = Controller::new(args).await?;
        tracing::info!(listen = %controller.local_addr(), "anyaccel fleet started");
        controller.run(terminated()).await
    })
}

async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A controller ready to run: spec read, client built, port bound.
pub struct Controller {
    spec: FleetSpec,
    hold_down: Duration,
    resync: Duration,
    client: Client,
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl Controller {
    pub async fn new(args: &FleetArgs) -> Result<Self, FleetError> {
        let text = std::fs::read_to_string(&args.spec).map_err(|error| FleetError::ReadSpec {
            path: args.spec.clone(),
            error,
        })?;
        let spec_error = |message: String| FleetError::Spec {
            path: args.spec.clone(),
            message,
        };
        let spec = FleetSpec::from_json(&text).map_err(spec_error)?;
        let hold_down_secs = args.hold_down_secs.unwrap_or(spec.hold_down_secs);
        if hold_down_secs == 0 {
            return Err(spec_error("hold_down_secs must be at least 1".into()));
        }
        let config = match &args.api_server {
            Some(url) => {
                let api_error = |message: String| FleetError::ApiServer {
                    url: url.clone(),
                    message,
                };
                let uri: axum::http::Uri = url.parse().map_err(|e| api_error(format!("{e}")))?;
                if uri.scheme().is_none() || uri.host().is_none() {
                    return Err(api_error("expected http(s)://host[:port]".into()));
                }
                kube::Config::new(uri)
            }
            None => kube::Config::infer().await.map_err(FleetError::Config)?,
        };
        // Err only if a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::try_from(config).map_err(FleetError::Client)?;
        let listener =
            TcpListener::bind(args.listen)
                .await
                .map_err(|error| FleetError::Listen {
                    addr: args.listen,
                    error,
                })?;
        let local_addr = listener.local_addr().map_err(|error| FleetError::Listen {
            addr: args.listen,
            error,
        })?;
        Ok(Self {
            spec,
            hold_down: Duration::from_secs(u64::from(hold_down_secs)),
            resync: Duration::from_secs(args.resync_secs),
            client,
            listener,
            local_addr,
        })
    }

    /// Where /metrics and /health/ready are served.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Watches and steers until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), FleetError> {
        let base: Vec<u16> = self.spec.pools.iter().map(|p| p.weight).collect();
        let metrics = Arc::new(Metrics::new(
            self.spec.pools.iter().map(|p| p.name.clone()).collect(),
            &base,
        ));
        let (stop_http, http_stopped) = oneshot::channel::<()>();
        let app = metrics::router(metrics.clone());
        let http = tokio::spawn(async move {
            axum::serve(self.listener, app)
                .with_graceful_shutdown(async {
                    let _ = http_stopped.await;
                })
                .await
        });

        let (tx, rx) = mpsc::channel(256);
        let watchers = observe::spawn_watchers(&self.client, &self.spec, tx);
        let steer = Steer {
            observations: Observations::new(&self.spec, self.hold_down),
            decider: Decider::new(base, self.hold_down),
            ingress: IngressWriter::new(&self.client, &self.spec),
            spec: self.spec,
            metrics,
            resync: self.resync,
            failures: BTreeMap::new(),
            ingress_read: false,
            next_read: Instant::now(),
            retry_at: None,
            backoff: RetryBackoff::default(),
            pending_events: VecDeque::new(),
        };
        let result = steer.run(rx, shutdown).await;
        drop(watchers);
        let _ = stop_http.send(());
        match http.await {
            Ok(Err(e)) => Err(FleetError::Serve(e)),
            _ => result,
        }
    }
}

/// An event that could not be posted yet.
struct PendingEvent {
    reason: &'static str,
    warning: bool,
    message: String,
}

/// Events not yet posted, at most; older ones are dropped (the log has them).
const MAX_PENDING_EVENTS: usize = 16;

/// The control loop's state.
struct Steer {
    spec: FleetSpec,
    observations: Observations,
    decider: Decider,
    ingress: IngressWriter,
    metrics: Arc<Metrics>,
    resync: Duration,
    /// Failing API operations (not watches) and their last error.
    failures: BTreeMap<&'static str, String>,
    ingress_read: bool,
    next_read: Instant,
    /// No Ingress or Event call before this (backoff after a failure).
    retry_at: Option<Instant>,
    backoff: RetryBackoff,
    pending_events: VecDeque<PendingEvent>,
}

impl Steer {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Update>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), FleetError> {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let wake = self.step().await;
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                update = rx.recv() => {
                    let Some(update) = update else { return Err(FleetError::WatchersStopped) };
                    self.observe(update);
                    // Apply everything queued before recomputing once.
                    while let Ok(update) = rx.try_recv() {
                        self.observe(update);
                    }
                }
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            }
        }
    }

    fn observe(&mut self, update: Update) {
        let source = update.source;
        if let Some(error) = self
            .observations
            .apply(update, Now::system())
            .map(str::to_owned)
        {
            let source = &self.observations.sources()[source];
            tracing::warn!(%source, error, "watch failed; keeping the weights in place until it lists again");
            self.metrics.api_error(source.operation());
        }
    }

    fn retry_due(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| now >= t)
    }

    fn succeeded(&mut self, operation: &'static str) {
        self.failures.remove(operation);
        self.retry_at = None;
        self.backoff.reset();
    }

    fn failed(&mut self, operation: &'static str, what: String, error: &ApiError, now: Instant) {
        tracing::warn!(operation, %error, "{what} failed; will retry");
        self.metrics.api_error(operation);
        self.failures.insert(operation, format!("{what}: {error}"));
        self.retry_at = Some(now + self.backoff.next_delay());
    }

    /// One pass: read the Ingress when due, recompute, write when the
    /// decision says so, post pending events. Returns when to wake without
    /// any new observation.
    async fn step(&mut self) -> Instant {
        let now = Now::system();
        let ingress = format!("{}/{}", self.spec.namespace, self.spec.ingress);
        // At start-up and every resync: someone may have re-applied it.
        if (!self.ingress_read || now.instant >= self.next_read) && self.retry_due(now.instant) {
            match self.ingress.read().await {
                Ok(weights) => {
                    self.succeeded("get_ingress");
                    self.ingress_read = true;
                    self.next_read = now.instant + self.resync;
                    if let Some(w) = &weights {
                        self.metrics.weights(w);
                    }
                    self.decider.set_in_place(weights);
                }
                Err(e) => self.failed(
                    "get_ingress",
                    format!("reading Ingress {ingress}"),
                    &e,
                    now.instant,
                ),
            }
        }
        let mut wake = self.next_read;
        if self.ingress_read && self.observations.complete() {
            let pools = self.observations.pool_states();
            let decision = self.decider.decide(now.instant, &pools);
            self.metrics.observe(&pools, &decision);
            if let Some(at) = decision.wake_at {
                // A hair past the expiry, so the next pass sees it expired.
                wake = wake.min(at + Duration::from_millis(5));
            }
            if !decision.write {
                // What a failed PATCH wanted is moot now: the weights in
                // place are the right ones.
                self.failures.remove("patch_ingress");
            } else if self.retry_due(now.instant) {
                self.write(&pools, &decision, &ingress, now).await;
            }
        }
        if self.retry_due(now.instant) {
            self.post_events(now).await;
        }
        if let Some(at) = self.retry_at {
            wake = wake.min(at);
        }
        self.metrics.set_ready(self.not_ready());
        wake
    }

    async fn write(&mut self, pools: &[PoolState], decision: &Decision, ingress: &str, now: Now) {
        let old = self.decider.in_place().map(<[u16]>::to_vec);
        if !self.ingress.differs(&decision.weights) {
            // Already there (the annotation only looked different).
            self.decider.written(decision);
            return;
        }
        match self.ingress.write(&decision.weights).await {
            Ok(()) => {
                self.succeeded("patch_ingress");
                self.decider.written(decision);
                self.metrics.weights(&decision.weights);
                self.metrics.weights_written();
                let (reason, warning, message) = self.describe(pools, decision, old.as_deref());
                tracing::info!(reason, "{message}");
                if self.pending_events.len() == MAX_PENDING_EVENTS {
                    self.pending_events.pop_front();
                }
                self.pending_events.push_back(PendingEvent {
                    reason,
                    warning,
                    message,
                });
            }
            Err(e) => self.failed(
                "patch_ingress",
                format!("patching Ingress {ingress}"),
                &e,
                now.instant,
            ),
        }
    }

    async fn post_events(&mut self, now: Now) {
        while let Some(event) = self.pending_events.front() {
            let posted = self
                .ingress
                .record(event.reason, event.warning, event.message.clone(), now)
                .await;
            match posted {
                Ok(()) => {
                    self.pending_events.pop_front();
                    self.succeeded("create_event");
                }
                Err(e) => {
                    self.failed("create_event", "posting an Event".into(), &e, now.instant);
                    return;
                }
            }
        }
    }

    /// The Event for a write: its reason, whether it is a warning, and a
    /// message naming the pools, their replicas and the weights' moves.
    fn describe(
        &self,
        pools: &[PoolState],
        decision: &Decision,
        old: Option<&[u16]>,
    ) -> (&'static str, bool, String) {
        let restored = decision.weights == self.decider.base();
        let mut states = Vec::new();
        for (i, (pool, state)) in self.spec.pools.iter().zip(pools).enumerate() {
            if !decision.constrained[i] && !restored {
                continue;
            }
            let mut s = format!("{} {}/{} ready", pool.name, state.ready, state.desired);
            if let Some(max) = self.observations.max_replicas(i) {
                s.push_str(&format!(" (max {max})"));
            }
            if decision.constrained[i]
                && let Some(signal) = self.observations.last_signal(i)
            {
                s.push_str(&format!(", {}", signal.what));
            }
            states.push(s);
        }
        let moves: Vec<String> = self
            .spec
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let from = old.map_or("?".to_string(), |o| o[i].to_string());
                format!("{} {from}→{}", p.name, decision.weights[i])
            })
            .collect();
        let moves = moves.join(", ");
        if restored {
            (
                REASON_RESTORED,
                false,
                format!(
                    "back to the plan's weights ({moves}); {}",
                    states.join("; ")
                ),
            )
        } else {
            (
                REASON_SHIFT,
                true,
                format!(
                    "cannot get capacity: {}; weights {moves}",
                    states.join("; ")
                ),
            )
        }
    }

    fn not_ready(&self) -> Option<String> {
        let mut reasons: Vec<String> = self.failures.values().cloned().collect();
        if !self.ingress_read && !self.failures.contains_key("get_ingress") {
            reasons.push("Ingress not read yet".into());
        }
        reasons.extend(self.observations.incomplete_reason());
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        fleet: FleetArgs,
    }

    #[test]
    fn every_flag_has_an_anyaccel_fleet_env_var() {
        let cmd = Cli::command();
        let mut seen = 0;
        for arg in cmd.get_arguments().filter(|a| a.get_long().is_some()) {
            let long = arg.get_long().unwrap_or_default();
            if long == "help" {
                continue;
            }
            let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or_default();
            let expected = format!("ANYACCEL_FLEET_{}", long.to_uppercase().replace('-', "_"));
            assert_eq!(env, expected, "--{long}");
            seen += 1;
        }
        assert_eq!(seen, 5);
    }

    #[test]
    fn zero_hold_down_is_refused() {
        assert!(Cli::try_parse_from(["fleet", "--spec", "x", "--hold-down-secs", "0"]).is_err());
        let ok = Cli::try_parse_from(["fleet", "--spec", "x"]).expect("defaults");
        assert_eq!(ok.fleet.listen.to_string(), "0.0.0.0:9090");
        assert_eq!(ok.fleet.hold_down_secs, None);
    }
}
