//! The real controller, in-process, against a fake Kubernetes API server
//! (`support`): no kube-apiserver can run here. Each test starts its own
//! fake and controller, drives the cluster's objects, and awaits what the
//! controller writes (Ingress PATCHes and Events arrive on channels).

mod support;

use std::time::{Duration, Instant};

use anyaccel_deploy::fleet::{FLEET_SPEC_KEY, FleetSpec, action_annotation, forward_action};
use anyaccel_deploy::{ClusterConfig, RenderedObject, render};
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

/// The fleet the tests run: gpu (600) before cpu (400) in namespace
/// `anyaccel`. Its spec and RBAC are what `anyaccel-deploy` renders for it.
const CLUSTER: &str = r#"
[cluster]
name = "test"
namespace = "anyaccel"

[image]
repository = "registry.example.com/anyaccel"
[image.tags]
cpu-amd64 = "1.0"
nvidia = "1.0-cuda"

[ingress]
mode = "cost-weighted"

[scaling]
trigger = "prometheus"
server_address = "http://prometheus.monitoring:9090"

[[artifacts]]
name = "sd-fp16"
target = "onnx-fp16"
repo = "acme/sd-fp16"

[[artifacts]]
name = "sd-fp32"
target = "onnx-fp32"
repo = "acme/sd-fp32"

[[pools]]
name = "gpu"
accelerator = "nvidia"
instance_families = ["g5"]
min_replicas = 1
max_replicas = 10
artifact = "sd-fp16"
latency_slo_secs = 10
weight = 600

[[pools]]
name = "cpu"
accelerator = "cpu-amd64"
instance_families = ["c7i"]
min_replicas = 1
max_replicas = 8
artifact = "sd-fp32"
latency_slo_secs = 60
weight = 400
"#;

fn rendered() -> Vec<RenderedObject> {
    let cfg = ClusterConfig::from_toml_str(CLUSTER).expect("the test fleet's config");
    render(&cfg).expect("renders")
}

/// The spec from the rendered ConfigMap.
fn spec() -> FleetSpec {
    let objs = rendered();
    let cm = objs
        .iter()
        .find(|o| o.kind() == "ConfigMap" && o.name() == "anyaccel-fleet")
        .expect("the controller's ConfigMap");
    let spec = FleetSpec::from_json(cm.value()["data"][FLEET_SPEC_KEY].as_str().expect("spec"))
        .expect("spec parses");
    // What the fake and the helpers below assume.
    assert_eq!(
        (spec.namespace.as_str(), spec.ingress.as_str()),
        (NS, INGRESS)
    );
    let pools: Vec<(&str, &str, &str, u16)> = spec
        .pools
        .iter()
        .map(|p| {
            (
                p.service.as_str(),
                p.deployment.as_str(),
                p.node_pool.as_str(),
                p.weight,
            )
        })
        .collect();
    assert_eq!(pools, [(GPU, GPU, GPU, 600), (CPU, CPU, CPU, 400)]);
    spec
}

fn key() -> String {
    action_annotation(&spec().action)
}

/// An RBAC rule as rendered, with where it applies (`None`: everywhere, from
/// a ClusterRole bound by a ClusterRoleBinding).
#[derive(Debug)]
struct Grant {
    namespace: Option<String>,
    groups: Vec<String>,
    resources: Vec<String>,
    names: Option<Vec<String>>,
    verbs: Vec<String>,
}

/// The rules bound to the controller's ServiceAccount in the rendered
/// objects, resolved through their RoleBindings and ClusterRoleBindings.
fn granted() -> Vec<Grant> {
    let objs = rendered();
    let deployment = objs
        .iter()
        .find(|o| o.kind() == "Deployment" && o.name() == "anyaccel-fleet")
        .expect("the controller's Deployment");
    let account = deployment.value()["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName")
        .to_string();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for binding in objs
        .iter()
        .filter(|o| matches!(o.kind(), "RoleBinding" | "ClusterRoleBinding"))
    {
        let b = binding.value();
        let ours = b["subjects"].as_array().is_some_and(|subjects| {
            subjects.iter().any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"] == account.as_str()
                    && s["namespace"] == NS
            })
        });
        if !ours {
            continue;
        }
        let (role_kind, role_name) = (
            b["roleRef"]["kind"].as_str().expect("roleRef.kind"),
            b["roleRef"]["name"].as_str().expect("roleRef.name"),
        );
        // A RoleBinding grants in its namespace (also for a ClusterRole).
        let scope = (binding.kind() == "RoleBinding").then(|| {
            binding
                .namespace()
                .expect("a RoleBinding is namespaced")
                .to_string()
        });
        let role = objs
            .iter()
            .find(|o| {
                o.kind() == role_kind
                    && o.name() == role_name
                    && (role_kind == "ClusterRole" || o.namespace() == scope.as_deref())
            })
            .unwrap_or_else(|| panic!("{} binds a missing {role_kind} {role_name}", binding.id()));
        for rule in role.value()["rules"].as_array().expect("rules") {
            out.push(Grant {
                namespace: scope.clone(),
                groups: strings(&rule["apiGroups"]),
                resources: strings(&rule["resources"]),
                names: rule.get("resourceNames").map(strings),
                verbs: strings(&rule["verbs"]),
            });
        }
    }
    assert!(!out.is_empty(), "no RBAC bound to {account}");
    out
}

/// What a request asks the authorizer: verb, API group, resource,
/// namespace and name, as the API server derives them from the URL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Attributes {
    verb: String,
    group: String,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

fn attributes(r: &Request) -> Attributes {
    let parts: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("not an API path: {r}"),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let (resource, name) = match rest {
        [resource] => (*resource, None),
        [resource, name] => (*resource, Some(name.to_string())),
        _ => panic!("unexpected API path: {r}"),
    };
    let verb = match (r.method.as_str(), &name) {
        ("GET", Some(_)) => "get",
        ("GET", None) if r.is_watch() => "watch",
        ("GET", None) => "list",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", Some(_)) => "delete",
        (m, _) => panic!("unexpected method {m}: {r}"),
    };
    Attributes {
        verb: verb.into(),
        group: group.into(),
        resource: resource.into(),
        namespace,
        name,
    }
}

fn allows(g: &Grant, a: &Attributes) -> bool {
    let has = |list: &[String], x: &str| list.iter().any(|v| v == x || v == "*");
    g.namespace
        .as_ref()
        .is_none_or(|ns| a.namespace.as_ref() == Some(ns))
        && has(&g.groups, &a.group)
        && has(&g.resources, &a.resource)
        && has(&g.verbs, &a.verb)
        && g.names
            .as_ref()
            .is_none_or(|names| a.name.as_ref().is_some_and(|n| names.contains(n)))
}

/// Every request the fake received is allowed by the rendered RBAC.
fn assert_rbac_allows_every_request(fake: &FakeApi) {
    let grants = granted();
    for r in fake.requests() {
        let a = attributes(&r);
        assert!(
            grants.iter().any(|g| allows(g, &a)),
            "the rendered RBAC does not allow {a:?} ({r}); granted: {grants:#?}"
        );
    }
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
        assert_rbac_allows_every_request(&self.fake);
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

    // The rendered RBAC allows every call (checked in `stop`), and every
    // verb it grants was used: none is granted in excess.
    let used: Vec<Attributes> = h.fake.requests().iter().map(attributes).collect();
    for g in granted() {
        for verb in &g.verbs {
            for resource in &g.resources {
                let exercised = used.iter().any(|a| {
                    &a.verb == verb
                        && &a.resource == resource
                        && g.groups.contains(&a.group)
                        && g.namespace
                            .as_ref()
                            .is_none_or(|ns| a.namespace.as_ref() == Some(ns))
                });
                assert!(
                    exercised,
                    "granted but never called: {verb} {resource} in {:?}",
                    g.namespace
                );
            }
        }
    }
    // The selectors it sends, which the fake applies.
    for r in h.fake.requests() {
        let label = r.query.get("labelSelector").map(String::as_str);
        let field = r.query.get("fieldSelector").map(String::as_str);
        match r.path.as_str() {
            NODE_CLAIMS => assert_eq!(
                label,
                Some("karpenter.sh/nodepool in (anyaccel-gpu,anyaccel-cpu)"),
                "{r}"
            ),
            EVENTS_DEFAULT | EVENTS_FLEET if r.method == "GET" => {
                assert_eq!(field, Some("reason=InsufficientCapacityError"), "{r}")
            }
            _ => assert_eq!((label, field), (None, None), "{r}"),
        }
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

/// The fake filters lists and watches by the selectors it is sent, and
/// refuses malformed ones, as the API server does: a controller sending a
/// bad selector would never become ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_applies_selectors_like_the_api_server() {
    let fake = FakeApi::start(json!({"metadata": {"name": INGRESS}})).await;
    fake.apply(NODE_CLAIMS, node_claim("a", GPU, false));
    fake.apply(NODE_CLAIMS, node_claim("b", CPU, true));
    fake.apply(NODE_CLAIMS, node_claim("c", "elsewhere", true));
    fake.apply(EVENTS_DEFAULT, ice_event("e1", "a", 1, 0.0));
    let mut other = ice_event("e2", "b", 1, 0.0);
    other["reason"] = json!("Launched");
    fake.apply(EVENTS_DEFAULT, other);

    let addr = fake.addr;
    let list = |path: String| list_names(addr, path);
    let claims = |q: &str| format!("{NODE_CLAIMS}?labelSelector={q}");
    for (query, want) in [
        // What the controller sends, as kube-rs encodes it.
        (
            "karpenter.sh%2Fnodepool+in+%28anyaccel-gpu%2Canyaccel-cpu%29",
            vec!["a", "b"],
        ),
        ("karpenter.sh%2Fnodepool%3Danyaccel-cpu", vec!["b"]),
        ("karpenter.sh%2Fnodepool%3D%3Danyaccel-cpu", vec!["b"]),
        ("karpenter.sh%2Fnodepool%21%3Danyaccel-cpu", vec!["a", "c"]),
        (
            "karpenter.sh%2Fnodepool+notin+%28anyaccel-gpu%2Celsewhere%29",
            vec!["b"],
        ),
        ("karpenter.sh%2Fnodepool", vec!["a", "b", "c"]),
        ("%21karpenter.sh%2Fnodepool", vec![]),
    ] {
        assert_eq!(
            list(claims(query)).await,
            (200, want.iter().map(|s| s.to_string()).collect()),
            "{query}"
        );
    }
    for malformed in [
        // An unclosed set, a set without parentheses, an empty set, a bad key.
        "karpenter.sh%2Fnodepool+in+%28anyaccel-gpu",
        "karpenter.sh%2Fnodepool+in+anyaccel-gpu",
        "karpenter.sh%2Fnodepool+in+%28%29",
        "karpenter.sh%2F%2Fnodepool%3Dx",
        "a%3Db%2C",
    ] {
        assert_eq!(list(claims(malformed)).await.0, 400, "{malformed}");
    }
    let events = |q: &str| format!("{EVENTS_DEFAULT}?fieldSelector={q}");
    assert_eq!(
        list(events("reason%3DInsufficientCapacityError")).await,
        (200, vec!["e1".to_string()])
    );
    assert_eq!(
        list(events("reason%21%3DInsufficientCapacityError")).await,
        (200, vec!["e2".to_string()])
    );
    assert_eq!(
        list(events("involvedObject.name%3Db%2Ctype%3DWarning")).await,
        (200, vec!["e2".to_string()])
    );
    // A field Events do not index, and a requirement without an operator.
    assert_eq!(list(events("message%3Dx")).await.0, 400);
    assert_eq!(list(events("reason")).await.0, 400);
    // NodeClaims support only the metadata fields.
    assert_eq!(
        list(format!("{NODE_CLAIMS}?fieldSelector=reason%3Dx"))
            .await
            .0,
        400
    );
    assert_eq!(
        list(format!("{NODE_CLAIMS}?fieldSelector=metadata.name%3Dc")).await,
        (200, vec!["c".to_string()])
    );

    // A watch with a selector only streams matching objects.
    let mut stream = tokio::net::TcpStream::connect(fake.addr)
        .await
        .expect("connect");
    let request = format!(
        "GET {NODE_CLAIMS}?watch=true&resourceVersion=0&labelSelector=karpenter.sh%2Fnodepool%3D{CPU} HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .expect("write");
    fake.apply(NODE_CLAIMS, node_claim("d", GPU, true));
    fake.apply(NODE_CLAIMS, node_claim("e", CPU, true));
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    while !seen.contains("\"name\":\"e\"") {
        let n = tokio::time::timeout_at(
            deadline,
            tokio::io::AsyncReadExt::read(&mut stream, &mut buf),
        )
        .await
        .expect("the watch streams e")
        .expect("read");
        assert!(n > 0, "watch closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("\"name\":\"b\""), "replayed b: {seen}");
    for name in ["a", "c", "d"] {
        assert!(
            !seen.contains(&format!("\"name\":\"{name}\"")),
            "{name} does not match: {seen}"
        );
    }
}

/// A list's status and the names of its items.
async fn list_names(addr: std::net::SocketAddr, path: String) -> (u16, Vec<String>) {
    let (code, body) = http_get(addr, &path).await;
    let names = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| {
            v["items"].as_array().map(|items| {
                items
                    .iter()
                    .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default();
    (code, names)
}
