//! The real controller, in-process, against a fake Kubernetes API server
//! (`support`): no kube-apiserver can run here. Each test starts its own
//! fake and controller, drives the cluster's objects, and awaits what the
//! controller writes (Ingress PATCHes and Events arrive on channels).

mod support;

use std::time::{Duration, Instant};

use anyaccel_deploy::fleet::{FleetPool, FleetSpec, action_annotation, forward_action};
use anyaccel_fleet::{Controller, FleetArgs};
use clap::Parser;
use serde_json::{Value, json};
use support::*;
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(10);
const GPU: &str = "anyaccel-gpu";
const CPU: &str = "anyaccel-cpu";

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    fleet: FleetArgs,
}

fn spec() -> FleetSpec {
    let pool = |name: &str, weight| FleetPool {
        name: name.into(),
        service: format!("anyaccel-{name}"),
        deployment: format!("anyaccel-{name}"),
        scaled_object: format!("anyaccel-{name}"),
        node_pool: format!("anyaccel-{name}"),
        weight,
    };
    FleetSpec {
        format_version: 1,
        namespace: NS.into(),
        ingress: INGRESS.into(),
        action: "weighted".into(),
        // Overridden by --hold-down-secs: the flag must win.
        hold_down_secs: 300,
        plan: None,
        pools: vec![pool("gpu", 600), pool("cpu", 400)],
    }
}

fn key() -> String {
    action_annotation("weighted")
}

/// The exact PATCH body the controller must send for these weights.
fn patch_for(gpu: u16, cpu: u16) -> Value {
    let action = forward_action([(GPU, gpu), (CPU, cpu)]);
    json!({"metadata": {"annotations": {key(): serde_json::to_string(&action).expect("json")}}})
}

struct Harness {
    fake: FakeApi,
    metrics: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    controller: tokio::task::JoinHandle<Result<(), anyaccel_fleet::FleetError>>,
    spec_path: std::path::PathBuf,
    hold_down: Duration,
}

impl Harness {
    /// A fleet at its plan: gpu 6/6 and cpu 3/3 ready, the Ingress at
    /// 600/400, and an old launch failure in the event history.
    async fn start(name: &str, hold_down: Duration) -> Harness {
        let ingress = json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": INGRESS, "namespace": NS, "uid": "ingress-uid-1",
                         "resourceVersion": "1", "annotations": {
                "alb.ingress.kubernetes.io/scheme": "internet-facing",
                key(): serde_json::to_string(&forward_action([(GPU, 600), (CPU, 400)])).expect("json"),
            }},
            "spec": {"ingressClassName": "alb"},
        });
        let fake = FakeApi::start(ingress).await;
        fake.apply(DEPLOYMENTS, deployment(GPU, 6, 6));
        fake.apply(DEPLOYMENTS, deployment(CPU, 3, 3));
        fake.apply(DEPLOYMENTS, deployment("unrelated", 1, 0));
        fake.apply(SCALED_OBJECTS, scaled_object(GPU, 10));
        fake.apply(SCALED_OBJECTS, scaled_object(CPU, 8));
        // Ten minutes old: history, not a reason to shed at start-up.
        fake.apply(
            EVENTS_DEFAULT,
            ice_event("old.1", "anyaccel-gpu-old01", 4, 600.0),
        );

        let spec_path =
            std::env::temp_dir().join(format!("anyaccel-fleet-{name}-{}.json", std::process::id()));
        std::fs::write(&spec_path, spec().to_json()).expect("write spec");
        let cli = Cli::try_parse_from([
            "fleet",
            "--spec",
            spec_path.to_str().expect("utf-8 path"),
            "--listen",
            "127.0.0.1:0",
            "--api-server",
            &fake.url(),
            "--hold-down-secs",
            &hold_down.as_secs().to_string(),
        ])
        .expect("flags");
        let controller = Controller::new(&cli.fleet).await.expect("controller");
        let metrics = controller.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let controller = tokio::spawn(controller.run(async {
            let _ = stopped.await;
        }));
        let mut h = Harness {
            fake,
            metrics,
            stop: Some(stop),
            controller,
            spec_path,
            hold_down,
        };
        h.await_ready().await;
        // Ready means it listed everything and decided once: the plan is in
        // place and the old event was ignored, so nothing was written.
        assert!(h.fake.patches.try_recv().is_err(), "no write at start-up");
        assert_eq!(
            h.gauge("anyaccel_fleet_weight{pool=\"gpu\"}").await,
            Some(600.0)
        );
        assert_eq!(
            h.gauge("anyaccel_fleet_pool_constrained{pool=\"gpu\"}")
                .await,
            Some(0.0)
        );
        h
    }

    async fn scrape(&self) -> String {
        let (code, body) = http_get(self.metrics, "/metrics").await;
        assert_eq!(code, 200);
        body
    }

    async fn gauge(&self, series: &str) -> Option<f64> {
        sample(&self.scrape().await, series)
    }

    async fn await_ready(&self) {
        let addr = self.metrics;
        eventually(WAIT, "/health/ready 200", || async move {
            (http_get(addr, "/health/ready").await.0 == 200).then_some(())
        })
        .await;
    }

    /// Waits for /health/ready to answer 503 with a reason containing `why`.
    async fn await_not_ready(&self, why: &str) -> String {
        let addr = self.metrics;
        eventually(WAIT, &format!("/health/ready 503 ({why})"), || async move {
            let (code, body) = http_get(addr, "/health/ready").await;
            (code == 503 && body.contains(why)).then_some(body)
        })
        .await
    }

    /// gpu can get 2 of its 6 replicas: its NodeClaim (named so only the
    /// watcher's cache maps it to the pool) fails and is deleted, then
    /// Karpenter's event about it arrives. Returns when the shed is written.
    async fn shed(&mut self) -> Instant {
        self.fake.apply(DEPLOYMENTS, deployment(GPU, 6, 2));
        let claim = node_claim("nc-7f3k2", GPU, false);
        self.fake.apply(NODE_CLAIMS, claim.clone());
        self.fake.delete(NODE_CLAIMS, claim);
        self.fake
            .apply(EVENTS_DEFAULT, ice_event("nc-7f3k2.1", "nc-7f3k2", 1, 0.0));
        let signalled = Instant::now();
        let patch = recv(&mut self.fake.patches, WAIT, "the shed PATCH").await;
        assert_eq!(patch, patch_for(200, 800), "600/400 with gpu at 2/6 ready");
        signalled
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(WAIT, &mut self.controller).await;
        let _ = std::fs::remove_file(&self.spec_path);
        assert!(
            matches!(result, Ok(Ok(Ok(())))),
            "clean shutdown: {result:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_without_capacity_loses_weight_in_proportion() {
    let mut h = Harness::start("shed", Duration::from_secs(1)).await;
    h.shed().await;

    // The annotation is exactly what forward_action builds; nothing else
    // on the Ingress changed.
    let expected = serde_json::to_string(&forward_action([(GPU, 200), (CPU, 800)])).expect("json");
    assert_eq!(h.fake.ingress_annotation(&key()), Some(expected));
    assert_eq!(
        h.fake
            .ingress_annotation("alb.ingress.kubernetes.io/scheme")
            .as_deref(),
        Some("internet-facing")
    );

    let event = recv(&mut h.fake.events, WAIT, "the CapacityShift Event").await;
    assert_eq!(event["reason"], "CapacityShift");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["involvedObject"]["kind"], "Ingress");
    assert_eq!(event["involvedObject"]["name"], INGRESS);
    assert_eq!(event["involvedObject"]["uid"], "ingress-uid-1");
    let message = event["message"].as_str().unwrap_or_default();
    for part in [
        "gpu 2/6 ready",
        "max 10",
        "NodeClaim nc-7f3k2",
        "gpu 600→200",
        "cpu 400→800",
    ] {
        assert!(message.contains(part), "{part:?} in {message:?}");
    }

    let scrape = h.scrape().await;
    assert_eq!(
        sample(&scrape, "anyaccel_fleet_weight{pool=\"gpu\"}"),
        Some(200.0)
    );
    assert_eq!(
        sample(&scrape, "anyaccel_fleet_weight{pool=\"cpu\"}"),
        Some(800.0)
    );
    assert_eq!(
        sample(&scrape, "anyaccel_fleet_planned_weight{pool=\"gpu\"}"),
        Some(600.0)
    );
    assert_eq!(
        sample(&scrape, "anyaccel_fleet_pool_constrained{pool=\"gpu\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&scrape, "anyaccel_fleet_pool_constrained{pool=\"cpu\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&scrape, "anyaccel_fleet_ready_replicas{pool=\"gpu\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&scrape, "anyaccel_fleet_desired_replicas{pool=\"gpu\"}"),
        Some(6.0)
    );
    assert_eq!(
        sample(&scrape, "anyaccel_fleet_weight_updates_total"),
        Some(1.0)
    );

    // Only the API calls the RBAC grants.
    for request in h.fake.requests() {
        let allowed = [
            format!("GET {DEPLOYMENTS}"),
            format!("GET {SCALED_OBJECTS}"),
            format!("GET {NODE_CLAIMS}"),
            format!("GET {EVENTS_DEFAULT}"),
            format!("GET {EVENTS_FLEET}"),
            format!("POST {EVENTS_FLEET}"),
            format!("GET {INGRESS_PATH}"),
            format!("PATCH {INGRESS_PATH}"),
        ];
        assert!(allowed.contains(&request), "unexpected API call {request}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_restores_the_plan_after_the_hold_down() {
    let mut h = Harness::start("recover", Duration::from_secs(2)).await;
    let signalled = h.shed().await;
    recv(&mut h.fake.events, WAIT, "the CapacityShift Event").await;

    // Traffic left, so KEDA wants fewer replicas, and they are all ready.
    // Within the hold-down the pool keeps only what 3 of the 6 it wanted
    // serve: the plan does not come back early.
    h.fake.apply(DEPLOYMENTS, deployment(GPU, 3, 3));
    let patch = recv(&mut h.fake.patches, WAIT, "the partial PATCH").await;
    assert_eq!(patch, patch_for(300, 700));
    recv(&mut h.fake.events, WAIT, "the second CapacityShift Event").await;

    // No further failure: once the hold-down passes, the plan exactly.
    let patch = recv(&mut h.fake.patches, WAIT, "the plan PATCH").await;
    let elapsed = signalled.elapsed();
    assert_eq!(patch, patch_for(600, 400));
    assert!(
        elapsed >= h.hold_down - Duration::from_millis(100),
        "plan restored {elapsed:?} after the last failure, before the {:?} hold-down",
        h.hold_down
    );
    let event = recv(&mut h.fake.events, WAIT, "the PlanRestored Event").await;
    assert_eq!(event["reason"], "PlanRestored");
    assert_eq!(event["type"], "Normal");
    let message = event["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("gpu 300→600") && message.contains("cpu 700→400"),
        "{message}"
    );
    assert_eq!(
        h.gauge("anyaccel_fleet_pool_constrained{pool=\"gpu\"}")
            .await,
        Some(0.0)
    );
    assert_eq!(
        h.gauge("anyaccel_fleet_weight_updates_total").await,
        Some(3.0)
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_signal_does_not_flap_back_to_the_plan() {
    let mut h = Harness::start("flap", Duration::from_secs(1)).await;
    h.shed().await;

    // For three hold-downs, a failure every 0.3 s (events that Karpenter
    // aggregates, and failing NodeClaims), while ready bounces between 2
    // and 3 of 6 and KEDA's desired between 6 and 2.
    let started = Instant::now();
    let mut k = 0;
    while started.elapsed() < 3 * h.hold_down {
        k += 1;
        if k % 2 == 0 {
            h.fake.apply(
                EVENTS_DEFAULT,
                ice_event("nc-7f3k2.1", "nc-7f3k2", 1 + k, 0.0),
            );
        } else {
            h.fake.apply(
                NODE_CLAIMS,
                node_claim(&format!("anyaccel-gpu-f{k}"), GPU, true),
            );
        }
        let (desired, ready) = [(6, 3), (2, 2), (6, 2), (3, 3)][k as usize % 4];
        h.fake.apply(DEPLOYMENTS, deployment(GPU, desired, ready));
        // The stimulus' own schedule, not a wait for the controller.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut during = Vec::new();
    while let Ok(p) = h.fake.patches.try_recv() {
        during.push(p);
    }
    assert!(
        !during.contains(&patch_for(600, 400)),
        "flapped back to the plan: {during:?}"
    );
    // It stayed constrained, and the weights only ever held gpu's share
    // of the 6 it wanted (2/6 or 3/6).
    for p in &during {
        assert!(
            *p == patch_for(200, 800) || *p == patch_for(300, 700),
            "unexpected weights {p}"
        );
    }
    assert_eq!(
        h.gauge("anyaccel_fleet_pool_constrained{pool=\"gpu\"}")
            .await,
        Some(1.0)
    );

    // The failures stop: the plan comes back after the hold-down.
    let quiet = Instant::now();
    h.fake.apply(DEPLOYMENTS, deployment(GPU, 3, 3));
    let last = loop {
        let p = recv(
            &mut h.fake.patches,
            WAIT,
            "the plan PATCH after the flapping",
        )
        .await;
        if p == patch_for(600, 400) {
            break quiet.elapsed();
        }
    };
    assert!(
        last >= h.hold_down - Duration::from_millis(400),
        "plan back after {last:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_patch_keeps_the_weights_reports_and_recovers() {
    let mut h = Harness::start("patch-error", Duration::from_secs(1)).await;
    h.fake.fail_patches(true);
    h.fake.apply(DEPLOYMENTS, deployment(GPU, 6, 2));
    h.fake
        .apply(NODE_CLAIMS, node_claim("anyaccel-gpu-x1", GPU, true));

    let attempt = recv(&mut h.fake.patch_attempts, WAIT, "a PATCH attempt").await;
    assert_eq!(attempt, patch_for(200, 800));
    let reason = h
        .await_not_ready("patching Ingress anyaccel/anyaccel")
        .await;
    assert!(
        reason.contains("500") || reason.contains("injected"),
        "{reason}"
    );
    let errors = eventually(WAIT, "api_errors_total{patch_ingress}", || async {
        sample(
            &h.scrape().await,
            "anyaccel_fleet_api_errors_total{operation=\"patch_ingress\"}",
        )
        .filter(|&n| n >= 1.0)
    })
    .await;
    assert!(errors >= 1.0);
    // The last good weights stay, in the Ingress and in the gauge.
    let plan = serde_json::to_string(&forward_action([(GPU, 600), (CPU, 400)])).expect("json");
    assert_eq!(h.fake.ingress_annotation(&key()), Some(plan));
    assert_eq!(
        h.gauge("anyaccel_fleet_weight{pool=\"gpu\"}").await,
        Some(600.0)
    );
    assert!(h.fake.patches.try_recv().is_err());

    // The API heals: the retry (with backoff) writes, and it is ready again.
    h.fake.fail_patches(false);
    let patch = recv(&mut h.fake.patches, WAIT, "the retried PATCH").await;
    assert_eq!(patch, patch_for(200, 800));
    h.await_ready().await;
    assert_eq!(
        h.gauge("anyaccel_fleet_weight{pool=\"gpu\"}").await,
        Some(200.0)
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_watch_writes_nothing_until_it_lists_again() {
    let mut h = Harness::start("watch-error", Duration::from_secs(5)).await;
    // gpu is scaling normally: 4 of 6 ready, no failure, the plan stands.
    h.fake.apply(DEPLOYMENTS, deployment(GPU, 6, 4));
    eventually(WAIT, "ready 4 seen", || async {
        (h.gauge("anyaccel_fleet_ready_replicas{pool=\"gpu\"}").await == Some(4.0)).then_some(())
    })
    .await;

    h.fake.break_watches(DEPLOYMENTS);
    h.await_not_ready("watching deployments failed").await;
    let errors = h
        .gauge("anyaccel_fleet_api_errors_total{operation=\"watch_deployments\"}")
        .await
        .unwrap_or(0.0);
    assert!(errors >= 1.0, "watch errors counted: {errors}");

    // While it is broken, gpu drops to 2 ready (unseen) and fails to get a
    // node (seen). Acting now would write 400/600 from the stale 4/6.
    h.fake.apply(DEPLOYMENTS, deployment(GPU, 6, 2));
    h.fake.apply(
        EVENTS_DEFAULT,
        ice_event("anyaccel-gpu-z9.1", "anyaccel-gpu-z9", 1, 0.0),
    );
    h.fake.heal(DEPLOYMENTS);

    // A fresh list, then one write from complete data.
    let patch = recv(&mut h.fake.patches, WAIT, "the PATCH after the relist").await;
    assert_eq!(
        patch,
        patch_for(200, 800),
        "written from the relisted 2/6, not the stale 4/6"
    );
    h.await_ready().await;
    h.stop().await;
}
