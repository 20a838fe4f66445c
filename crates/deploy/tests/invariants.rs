//! Properties every rendered fleet must have, checked on every example
//! config (and a few variants): probes, grace periods, devices and taints,
//! architectures, weights, autoscaling wiring.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use anyaccel_deploy::crd::{PodIdentityProvider, TriggerAuthenticationSpec};
use anyaccel_deploy::{
    ClusterConfig, PRESTOP_SLEEP_SECS, RenderedObject, SERVER_PATHS, SERVER_PORT, render,
};
use serde_json::Value;
use support::{find, of_kind};

const DRAIN_ENV: &str = "ANYACCEL_DRAIN_TIMEOUT_SECS";

fn all_fleets() -> Vec<(String, Vec<RenderedObject>)> {
    let mut v: Vec<(String, Vec<RenderedObject>)> = support::example_configs()
        .into_iter()
        .map(|p| (p.display().to_string(), support::render_example(&p)))
        .collect();
    v.push(("MINIMAL".into(), support::render_str(support::MINIMAL)));
    v
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn pod_spec(o: &RenderedObject) -> &Value {
    &o.value()["spec"]["template"]["spec"]
}

fn containers(o: &RenderedObject) -> &Vec<Value> {
    pod_spec(o)["containers"].as_array().expect("containers")
}

fn env_of<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    c["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
}

/// The pools' server Deployments (not the fleet controller's).
fn servers(objs: &[RenderedObject]) -> Vec<&RenderedObject> {
    objs.iter()
        .filter(|o| o.kind() == "Deployment" && !is_controller(o))
        .collect()
}

fn is_controller(o: &RenderedObject) -> bool {
    o.value()["metadata"]["labels"]["app.kubernetes.io/component"] == "fleet-controller"
}

/// Server Deployments and compile Jobs: every pod this fleet runs on pool
/// nodes.
fn workloads(objs: &[RenderedObject]) -> Vec<&RenderedObject> {
    objs.iter()
        .filter(|o| (o.kind() == "Deployment" && !is_controller(o)) || o.kind() == "Job")
        .collect()
}

fn node_pool_by_name<'a>(objs: &'a [RenderedObject], name: &str) -> &'a RenderedObject {
    find(objs, "NodePool", name)
}

fn requirement_values<'a>(np: &'a RenderedObject, key: &str) -> Option<Vec<&'a str>> {
    np.value()["spec"]["template"]["spec"]["requirements"]
        .as_array()?
        .iter()
        .find(|r| r["key"] == key && r["operator"] == "In")
        .map(|r| {
            r["values"]
                .as_array()
                .map(|a| a.iter().map(str_of).collect())
                .unwrap_or_default()
        })
}

#[test]
fn probes_point_at_paths_the_server_serves() {
    for (name, objs) in all_fleets() {
        for d in servers(&objs) {
            for c in containers(d) {
                for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                    let p = &c[probe];
                    assert!(p.is_object(), "{name} {}: no {probe}", d.name());
                    let path = str_of(&p["httpGet"]["path"]);
                    assert!(
                        SERVER_PATHS.contains(&path),
                        "{name} {}: {probe} on {path:?}, which the server does not serve",
                        d.name()
                    );
                    assert_eq!(p["httpGet"]["port"], "http");
                }
                // The named port is the one the server listens on.
                let ports = c["ports"].as_array().expect("ports");
                assert!(
                    ports
                        .iter()
                        .any(|p| p["name"] == "http" && p["containerPort"] == SERVER_PORT)
                );
                assert_eq!(
                    env_of(c, "ANYACCEL_PORT"),
                    Some(SERVER_PORT.to_string().as_str())
                );
                // Liveness must not restart a replica that is merely busy:
                // it tolerates at least 30 s without an answer.
                let l = &c["livenessProbe"];
                let tolerated = l["periodSeconds"].as_i64().unwrap_or(10)
                    * l["failureThreshold"].as_i64().unwrap_or(3);
                assert!(
                    tolerated >= 30,
                    "{name}: liveness gives up after {tolerated}s"
                );
                // Startup covers model load and warm-up.
                let s = &c["startupProbe"];
                let budget = s["periodSeconds"].as_i64().unwrap_or(10)
                    * s["failureThreshold"].as_i64().unwrap_or(3);
                assert!(budget >= 300, "{name}: startup budget only {budget}s");
            }
            let ann = &d.value()["spec"]["template"]["metadata"]["annotations"];
            assert!(SERVER_PATHS.contains(&str_of(&ann["prometheus.io/path"])));
        }
        // ALB health checks use the readiness path too.
        for o in of_kind(&objs, "Service")
            .into_iter()
            .chain(of_kind(&objs, "Ingress"))
        {
            let path = str_of(
                &o.value()["metadata"]["annotations"]["alb.ingress.kubernetes.io/healthcheck-path"],
            );
            assert_eq!(path, "/health/ready", "{name} {}", o.id());
        }
    }
}

#[test]
fn grace_period_exceeds_prestop_plus_drain() {
    for (name, objs) in all_fleets() {
        for d in servers(&objs) {
            let grace = pod_spec(d)["terminationGracePeriodSeconds"]
                .as_i64()
                .expect("grace period");
            for c in containers(d) {
                let drain: i64 = env_of(c, DRAIN_ENV)
                    .expect("drain timeout env")
                    .parse()
                    .expect("number");
                let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
                    .as_i64()
                    .expect("preStop sleep");
                assert_eq!(pre_stop, i64::from(PRESTOP_SLEEP_SECS));
                assert!(
                    grace > pre_stop + drain,
                    "{name} {}: grace {grace}s <= preStop {pre_stop}s + drain {drain}s",
                    d.name()
                );
            }
            // The ALB lets in-flight requests finish at least as long as the
            // server drains.
            let svc = find(&objs, "Service", d.name());
            let attrs = str_of(
                &svc.value()["metadata"]["annotations"]["alb.ingress.kubernetes.io/target-group-attributes"],
            );
            let dereg: i64 = attrs
                .split(',')
                .find_map(|kv| kv.strip_prefix("deregistration_delay.timeout_seconds="))
                .expect("deregistration delay")
                .parse()
                .expect("number");
            let drain: i64 = env_of(&containers(d)[0], DRAIN_ENV)
                .expect("drain")
                .parse()
                .expect("n");
            assert!(
                dereg >= drain,
                "{name}: deregistration {dereg}s < drain {drain}s"
            );
        }
    }
}

#[test]
fn accelerator_pods_request_their_device_and_tolerate_its_taint() {
    for (name, objs) in all_fleets() {
        for w in workloads(&objs) {
            let np_name = str_of(&pod_spec(w)["nodeSelector"]["karpenter.sh/nodepool"]);
            let np = node_pool_by_name(&objs, np_name);
            let taints = np.value()["spec"]["template"]["spec"]["taints"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let tolerations = pod_spec(w)["tolerations"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            // Every taint of the node is tolerated, or the pod never lands.
            for t in &taints {
                let ok = tolerations.iter().any(|tol| {
                    tol["key"] == t["key"]
                        && (tol["effect"] == t["effect"] || tol["effect"].is_null())
                        && (tol["operator"] == "Exists"
                            || (tol["operator"] == "Equal" && tol["value"] == t["value"]))
                });
                assert!(ok, "{name} {}: does not tolerate {t}", w.id());
            }
            let accel = str_of(&w.value()["metadata"]["labels"]["anyaccel.io/accelerator"]);
            let device = match accel {
                "nvidia" => Some("nvidia.com/gpu"),
                "neuron" => Some("aws.amazon.com/neuron"),
                _ => None,
            };
            for c in containers(w) {
                let req = &c["resources"]["requests"];
                let lim = &c["resources"]["limits"];
                match device {
                    Some(dev) => {
                        let n: u32 = str_of(&req[dev]).parse().expect("device count");
                        assert!(n >= 1, "{name} {}: requests no {dev}", w.id());
                        assert_eq!(req[dev], lim[dev], "{name}: device request != limit");
                        assert!(
                            taints.iter().any(|t| t["key"] == dev),
                            "{name}: {np_name} nodes lack the {dev} taint"
                        );
                    }
                    None => {
                        for dev in ["nvidia.com/gpu", "aws.amazon.com/neuron"] {
                            assert!(req.get(dev).is_none(), "{name}: CPU pod requests {dev}");
                        }
                    }
                }
                assert!(req["cpu"].is_string() && req["memory"].is_string());
                assert_eq!(req["memory"], lim["memory"], "memory limit = request");
            }
        }
    }
}

#[test]
fn each_node_pool_offers_the_architecture_its_image_is_built_for() {
    for (name, objs) in all_fleets() {
        for w in workloads(&objs) {
            let spec = pod_spec(w);
            let arch = str_of(&spec["nodeSelector"]["kubernetes.io/arch"]);
            let np = node_pool_by_name(
                &objs,
                str_of(&spec["nodeSelector"]["karpenter.sh/nodepool"]),
            );
            let offered = requirement_values(np, "kubernetes.io/arch").expect("arch requirement");
            assert_eq!(offered, vec![arch], "{name} {}", w.id());
            // The image flavour matches the architecture: arm64 only for
            // the CPU image (CUDA and Neuron images are amd64).
            let accel = str_of(&w.value()["metadata"]["labels"]["anyaccel.io/accelerator"]);
            let expected = if accel == "cpu-arm64" {
                "arm64"
            } else {
                "amd64"
            };
            assert_eq!(arch, expected, "{name} {}: {accel} on {arch}", w.id());
            // And the hardware requirement matches the device.
            match accel {
                "nvidia" => assert_eq!(
                    requirement_values(np, "karpenter.k8s.aws/instance-gpu-manufacturer"),
                    Some(vec!["nvidia"])
                ),
                "neuron" => assert_eq!(
                    requirement_values(np, "karpenter.k8s.aws/instance-accelerator-manufacturer"),
                    Some(vec!["aws"])
                ),
                _ => {
                    let reqs = np.value()["spec"]["template"]["spec"]["requirements"]
                        .as_array()
                        .expect("requirements");
                    assert!(reqs.iter().any(|r| r["key"]
                        == "karpenter.k8s.aws/instance-gpu-manufacturer"
                        && r["operator"] == "DoesNotExist"));
                }
            }
            assert!(
                np.value()["spec"]["limits"].is_object(),
                "{name}: NodePool without limits"
            );
            // The pod's local storage (caches, compile scratch) fits on the
            // node's root volume next to the images.
            let nc = find(
                &objs,
                "EC2NodeClass",
                str_of(&np.value()["spec"]["template"]["spec"]["nodeClassRef"]["name"]),
            );
            let root_gib: u64 =
                str_of(&nc.value()["spec"]["blockDeviceMappings"][0]["ebs"]["volumeSize"])
                    .trim_end_matches("Gi")
                    .parse()
                    .expect("volume size in Gi");
            let eph = str_of(&containers(w)[0]["resources"]["requests"]["ephemeral-storage"]);
            let eph_gib: u64 = eph
                .trim_end_matches("Gi")
                .parse()
                .expect("ephemeral storage in Gi");
            assert!(
                eph_gib + 20 <= root_gib,
                "{name} {}: {eph} does not fit a {root_gib}Gi root volume",
                w.id()
            );
        }
        // Each NodePool points at its own EC2NodeClass, on the AL2023 alias.
        for np in of_kind(&objs, "NodePool") {
            let ref_name = str_of(&np.value()["spec"]["template"]["spec"]["nodeClassRef"]["name"]);
            let nc = find(&objs, "EC2NodeClass", ref_name);
            let alias = str_of(&nc.value()["spec"]["amiSelectorTerms"][0]["alias"]);
            assert!(alias.starts_with("al2023@"), "{name}: {alias}");
        }
    }
}

#[test]
fn weights_are_in_range_and_a_cost_weighted_ingress_covers_every_pool() {
    for (name, objs) in all_fleets() {
        let ing = of_kind(&objs, "Ingress");
        assert_eq!(ing.len(), 1, "{name}: one Ingress");
        let ing = ing[0];
        let ann = &ing.value()["metadata"]["annotations"];
        let action = str_of(&ann["alb.ingress.kubernetes.io/actions.weighted-pools"]);
        let action: Value = serde_json::from_str(action).expect("forward action is JSON");
        assert_eq!(action["type"], "forward");
        let groups = action["forwardConfig"]["targetGroups"]
            .as_array()
            .expect("targetGroups");
        assert!(
            !groups.is_empty() && groups.len() <= 5,
            "{name}: ALB allows 1..=5 target groups"
        );
        let services: BTreeSet<&str> = of_kind(&objs, "Service").iter().map(|s| s.name()).collect();
        let covered: BTreeSet<&str> = groups.iter().map(|g| str_of(&g["serviceName"])).collect();
        assert_eq!(
            covered, services,
            "{name}: the forward action must cover every pool Service"
        );
        assert_eq!(
            covered.len(),
            groups.len(),
            "{name}: a Service listed twice"
        );
        let deployments = servers(&objs).len();
        assert_eq!(services.len(), deployments, "{name}: one Service per pool");
        for g in groups {
            let w = g["weight"].as_u64().expect("weight");
            assert!((1..=999).contains(&w), "{name}: weight {w} outside 1..=999");
            assert_eq!(g["servicePort"], "http");
            let svc = find(&objs, "Service", str_of(&g["serviceName"]));
            assert!(
                svc.value()["spec"]["ports"]
                    .as_array()
                    .expect("ports")
                    .iter()
                    .any(|p| p["name"] == "http")
            );
        }
        // The rule routes "/" to that action.
        let paths = ing.value()["spec"]["rules"][0]["http"]["paths"]
            .as_array()
            .expect("paths");
        let root = paths.iter().find(|p| p["path"] == "/").expect("/ rule");
        assert_eq!(root["backend"]["service"]["name"], "weighted-pools");
        assert_eq!(root["backend"]["service"]["port"]["name"], "use-annotation");
        // /metrics is not reachable through the ALB.
        let metrics = paths
            .iter()
            .position(|p| p["path"] == "/metrics")
            .expect("/metrics rule");
        assert!(metrics < paths.iter().position(|p| p["path"] == "/").unwrap_or(0));
    }
}

#[test]
fn cost_weighted_weights_are_the_configured_ones_and_even_splits_evenly() {
    let seed = support::seed();
    let ing = of_kind(&seed, "Ingress")[0];
    let action: Value = serde_json::from_str(str_of(
        &ing.value()["metadata"]["annotations"]["alb.ingress.kubernetes.io/actions.weighted-pools"],
    ))
    .expect("json");
    let weights: BTreeMap<&str, u64> = action["forwardConfig"]["targetGroups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| (str_of(&g["serviceName"]), g["weight"].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(
        weights,
        BTreeMap::from([
            ("anyaccel-g5", 30),
            ("anyaccel-g6", 45),
            ("anyaccel-inf2", 25)
        ])
    );
    let cpu = support::cpu();
    let ing = of_kind(&cpu, "Ingress")[0];
    let action: Value = serde_json::from_str(str_of(
        &ing.value()["metadata"]["annotations"]["alb.ingress.kubernetes.io/actions.weighted-pools"],
    ))
    .expect("json");
    let ws: BTreeSet<u64> = action["forwardConfig"]["targetGroups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| g["weight"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(ws.len(), 1, "even mode gives every pool the same weight");
}

#[test]
fn every_pool_is_autoscaled_on_the_published_metric() {
    for (name, objs) in all_fleets() {
        for d in servers(&objs) {
            assert!(
                d.value()["spec"]["replicas"].is_null(),
                "{name}: replicas would fight the HPA"
            );
            let so = find(&objs, "ScaledObject", d.name());
            let spec = &so.value()["spec"];
            assert_eq!(spec["scaleTargetRef"]["name"], d.name());
            assert_eq!(spec["scaleTargetRef"]["kind"], "Deployment");
            let min = spec["minReplicaCount"].as_i64().expect("min");
            let max = spec["maxReplicaCount"].as_i64().expect("max");
            assert!(1 <= min && min <= max, "{name}: {min}..{max}");
            let pool = str_of(&d.value()["metadata"]["labels"]["anyaccel.io/pool"]);
            let triggers = spec["triggers"].as_array().expect("triggers");
            let server = &containers(d)[0];
            assert_eq!(
                env_of(server, anyaccel_deploy::REDIS_URL_ENV).is_some(),
                triggers.iter().any(|t| t["type"] == "redis-streams"),
                "{name}: a pool reading a Redis queue scales on its lag, and only then"
            );
            for t in triggers {
                let md: BTreeMap<String, String> =
                    serde_json::from_value(t["metadata"].clone()).expect("string map");
                // The TriggerAuthentication the trigger names, as KEDA reads it.
                let auth: Option<TriggerAuthenticationSpec> =
                    t["authenticationRef"]["name"].as_str().map(|auth| {
                        let ta = find(&objs, "TriggerAuthentication", auth);
                        serde_json::from_value(ta.value()["spec"].clone()).expect("spec")
                    });
                match str_of(&t["type"]) {
                    "prometheus" => {
                        let q = &md["query"];
                        assert!(
                            q == &anyaccel_metrics::backlog_query(pool)
                                || q == &anyaccel_metrics::queue_depth_query(pool),
                            "{name}: query {q} is not one of the metrics crate's"
                        );
                    }
                    "aws-cloudwatch" => {
                        assert_eq!(md["namespace"], anyaccel_deploy::CLOUDWATCH_NAMESPACE);
                        assert_eq!(md["metricName"], anyaccel_deploy::CLOUDWATCH_BACKLOG_METRIC);
                        assert_eq!(md["dimensionName"], "Pool;Accelerator;Model");
                        let values: Vec<&str> = md["dimensionValue"].split(';').collect();
                        let c = &containers(d)[0];
                        assert_eq!(values[0], pool);
                        assert_eq!(Some(values[1]), env_of(c, "ANYACCEL_ACCELERATOR"));
                        assert_eq!(Some(values[2]), env_of(c, "ANYACCEL_MODEL"));
                        // One datapoint per replica per period, summed.
                        assert_eq!(md["metricStat"], "Sum");
                        assert_eq!(t["metricType"], "AverageValue");
                        assert_eq!(
                            env_of(c, "ANYACCEL_CLOUDWATCH_INTERVAL_SECS"),
                            Some(md["metricStatPeriod"].as_str())
                        );
                        assert!(matches!(
                            env_of(c, "ANYACCEL_CLOUDWATCH"),
                            Some("api" | "emf")
                        ));
                        assert_eq!(
                            env_of(c, "ANYACCEL_CLOUDWATCH_REGION"),
                            Some(md["awsRegion"].as_str())
                        );
                        let provider = auth.as_ref().and_then(|a| a.pod_identity.as_ref());
                        assert!(
                            provider.is_some_and(|p| p.provider == PodIdentityProvider::Aws),
                            "{name}: CloudWatch is read with KEDA's AWS identity"
                        );
                    }
                    "redis-streams" => {
                        // The stream and group the pool's servers read.
                        let queue =
                            env_of(server, anyaccel_deploy::REDIS_QUEUE_ENV).expect("queue");
                        assert_eq!(md["stream"], anyaccel_deploy::redis_stream_key(queue));
                        // The Redis they connect to: address, TLS, database.
                        let url = env_of(server, anyaccel_deploy::REDIS_URL_ENV).expect("url");
                        let (scheme, rest) = url.split_once("://").expect("a URL");
                        let (address, db) = rest.split_once('/').unwrap_or((rest, ""));
                        assert_eq!(md["address"], address, "{name}");
                        assert_eq!(
                            scheme == "rediss",
                            md.get("enableTLS").is_some_and(|v| v == "true"),
                            "{name}: {url}"
                        );
                        assert_eq!(md.get("databaseIndex").map_or("", String::as_str), db);
                        assert!(!url.contains('@'), "{name}: no credentials in {url}");
                        // The stream's length (jobs waiting or running): no
                        // consumer group, whose lag or pending count KEDA
                        // would read instead.
                        assert!(!md.contains_key("consumerGroup"), "{name}");
                        assert!(md["streamLength"].parse::<u64>().is_ok_and(|n| n >= 1));
                        assert_eq!(t["metricType"], "AverageValue");
                        // KEDA reads the password the servers read.
                        let pw = server["env"]
                            .as_array()
                            .and_then(|e| {
                                e.iter()
                                    .find(|e| e["name"] == anyaccel_deploy::REDIS_PASSWORD_ENV)
                            })
                            .map(|e| &e["valueFrom"]["secretKeyRef"])
                            .expect("password from a Secret");
                        let refs = &auth.as_ref().expect("authenticationRef").secret_target_ref;
                        let r = refs
                            .iter()
                            .find(|r| r.parameter == "password")
                            .expect("password");
                        assert_eq!(
                            (pw["name"].as_str(), pw["key"].as_str()),
                            (Some(r.name.as_str()), Some(r.key.as_str()))
                        );
                    }
                    other => panic!("{name}: unexpected trigger {other}"),
                }
                anyaccel_deploy::keda::check_trigger(
                    str_of(&t["type"]),
                    &md,
                    t["metricType"].as_str(),
                    auth.as_ref(),
                )
                .unwrap_or_else(|e| panic!("{name}: KEDA would reject the trigger: {e}"));
            }
            // Scale up at once, scale down slowly, never to zero.
            let b = &spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"];
            assert_eq!(b["scaleUp"]["stabilizationWindowSeconds"], 0);
            assert!(
                b["scaleDown"]["stabilizationWindowSeconds"]
                    .as_i64()
                    .unwrap_or(0)
                    >= 120
            );
            assert!(spec["cooldownPeriod"].is_null() && spec["idleReplicaCount"].is_null());
            // The env carries the pool identity the metrics are labelled with.
            let c = &containers(d)[0];
            assert_eq!(env_of(c, anyaccel_metrics::env::POOL), Some(pool));
        }
    }
}

#[test]
fn servers_run_the_device_and_library_their_artifact_needs() {
    let server = |objs: &[RenderedObject], pool: &str| -> Value {
        containers(
            workloads(objs)
                .into_iter()
                .find(|o| o.kind() == "Deployment" && o.name().contains(pool))
                .expect("the pool's Deployment"),
        )[0]
        .clone()
    };
    let plain = support::render_str(support::MINIMAL);
    let cpu = server(&plain, "cpu");
    assert_eq!(env_of(&cpu, "ANYACCEL_DEVICE"), Some("cpu"));
    // The servers offer the pool's sizes (here the SD family's default).
    assert_eq!(env_of(&cpu, "ANYACCEL_SIZES"), Some("512x512"));
    assert_eq!(
        env_of(&cpu, "ORT_DYLIB_PATH"),
        None,
        "the image's default library"
    );
    assert_eq!(
        env_of(&server(&plain, "gpu"), "ANYACCEL_DEVICE"),
        Some("cuda")
    );

    let sdxl = support::render_str(&support::MINIMAL.replacen(
        "repo = \"acme/sd-fp16\"",
        "repo = \"acme/sd-fp16\"\nfamily = \"sdxl\"",
        1,
    ));
    let sizes = env_of(&server(&sdxl, "gpu"), "ANYACCEL_SIZES").map(str::to_string);
    assert!(
        sizes
            .as_deref()
            .is_some_and(|s| s.starts_with("1024x1024,")),
        "{sizes:?}"
    );

    let openvino = support::render_str(&support::MINIMAL.replacen(
        "target = \"onnx-fp32\"",
        "target = \"onnx-openvino\"",
        1,
    ));
    let cpu = server(&openvino, "cpu");
    assert_eq!(env_of(&cpu, "ANYACCEL_DEVICE"), Some("openvino"));
    assert_eq!(
        env_of(&cpu, "ORT_DYLIB_PATH"),
        Some("/opt/onnxruntime-openvino/lib/libonnxruntime.so")
    );
    let containerfile =
        std::fs::read_to_string(support::repo_root().join("deploy/containers/Containerfile.cpu"))
            .expect("Containerfile.cpu");
    assert!(
        containerfile.contains("/opt/onnxruntime-openvino/lib/"),
        "the CPU image must carry the library the env points at"
    );
}

#[test]
fn pods_are_non_root_with_a_read_only_root_filesystem() {
    for (name, objs) in all_fleets() {
        for w in workloads(&objs) {
            let spec = pod_spec(w);
            assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
            assert_eq!(spec["securityContext"]["runAsUser"], 10001);
            assert_eq!(spec["automountServiceAccountToken"], false);
            for c in containers(w) {
                let sc = &c["securityContext"];
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{name} {}", w.id());
                assert_eq!(sc["allowPrivilegeEscalation"], false);
                assert_eq!(sc["capabilities"]["drop"][0], "ALL");
                let mounts: BTreeSet<&str> = c["volumeMounts"]
                    .as_array()
                    .expect("mounts")
                    .iter()
                    .map(|m| str_of(&m["mountPath"]))
                    .collect();
                assert!(
                    mounts.contains("/tmp") && mounts.contains("/models"),
                    "{name}: {mounts:?}"
                );
                assert_eq!(env_of(c, "HF_HOME"), Some("/models/hf"));
            }
        }
        let ns = of_kind(&objs, "Namespace")[0];
        assert_eq!(
            ns.value()["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
            "restricted"
        );
    }
}

#[test]
fn device_plugins_run_where_the_devices_are() {
    let seed = support::seed();
    let ds = of_kind(&seed, "DaemonSet");
    assert_eq!(ds.len(), 2, "NVIDIA and Neuron plugins");
    for d in ds {
        assert_eq!(d.namespace(), Some("kube-system"));
        let tol = pod_spec(d)["tolerations"].as_array().expect("tolerations");
        // Pool nodes carry the pool taint as well as the device taint.
        assert!(
            tol.iter()
                .any(|t| t["key"] == "anyaccel.io/pool" && t["operator"] == "Exists")
        );
        let device = if d.name().starts_with("nvidia") {
            "nvidia.com/gpu"
        } else {
            "aws.amazon.com/neuron"
        };
        assert!(tol.iter().any(|t| t["key"] == device));
    }
    // The Neuron plugin's service account is bound to its ClusterRole.
    let crb = find(&seed, "ClusterRoleBinding", "neuron-device-plugin");
    assert_eq!(crb.value()["roleRef"]["name"], "neuron-device-plugin");
    find(&seed, "ClusterRole", "neuron-device-plugin");
    // A CPU-only fleet renders no device plugin.
    assert!(of_kind(&support::cpu(), "DaemonSet").is_empty());
    // And none at all when the operator installs them with Helm.
    let cfg = ClusterConfig::from_toml_str(&format!(
        "{}\n[device_plugins]\nrender = false\n",
        support::MINIMAL
    ))
    .expect("config");
    assert!(
        render(&cfg)
            .expect("render")
            .iter()
            .all(|o| o.kind() != "DaemonSet")
    );
}

#[test]
fn compile_jobs_run_on_the_target_hardware_and_push_the_artifact() {
    let seed = support::seed();
    let jobs = of_kind(&seed, "Job");
    assert_eq!(jobs.len(), 2);
    for j in jobs {
        let c = &containers(j)[0];
        let args: Vec<&str> = c["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(str_of)
            .collect();
        assert_eq!(args[0], "compile");
        let target = args[args
            .iter()
            .position(|a| *a == "--target")
            .expect("--target")
            + 1];
        let accel = str_of(&j.value()["metadata"]["labels"]["anyaccel.io/accelerator"]);
        match target {
            "neuron" => assert_eq!(accel, "neuron"),
            "onnx-fp16" => assert_eq!(accel, "nvidia"),
            other => panic!("unexpected target {other}"),
        }
        assert!(args.contains(&"--push"));
        assert!(args.iter().any(|a| a.starts_with("/artifacts/")));
        assert_eq!(pod_spec(j)["restartPolicy"], "Never");
        // Pushing requires the Hub token, so the Secret is not optional.
        let tok = c["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == "HF_TOKEN")
            .expect("HF_TOKEN");
        assert_eq!(tok["valueFrom"]["secretKeyRef"]["optional"], false);
    }
    // Published artifacts need no Job.
    assert!(of_kind(&support::cpu(), "Job").is_empty());
}

#[test]
fn object_names_fit_kubernetes_limits() {
    for (name, objs) in all_fleets() {
        for o in &objs {
            assert!(
                support::schema::is_dns_subdomain(o.name()),
                "{name}: {}",
                o.id()
            );
            if ["Service", "Namespace"].contains(&o.kind()) {
                assert!(
                    o.name().len() <= 63,
                    "{name}: {} longer than a DNS label",
                    o.id()
                );
            }
            if let Some(labels) = o.value()["metadata"]["labels"].as_object() {
                for (k, v) in labels {
                    assert!(support::schema::is_qualified_name(k), "{name}: label {k}");
                    assert!(
                        support::schema::is_label_value(str_of(v)),
                        "{name}: label {k}={v}"
                    );
                }
            }
        }
        // The NodePool name is also a node label value.
        for np in of_kind(&objs, "NodePool") {
            assert!(np.name().len() <= 63);
        }
    }
}

#[test]
fn c2pa_signing_is_configured_on_every_server() {
    let objs = support::seed();
    for d in servers(&objs) {
        let c = &containers(d)[0];
        assert_eq!(env_of(c, "ANYACCEL_C2PA"), Some("on"));
        assert_eq!(env_of(c, "ANYACCEL_C2PA_INCLUDE_PROMPT"), Some("false"));
        let cert = env_of(c, "ANYACCEL_C2PA_CERT").expect("cert path");
        let key = env_of(c, "ANYACCEL_C2PA_KEY").expect("key path");
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "c2pa")
            .expect("the Secret is mounted");
        let dir = str_of(&mount["mountPath"]);
        assert_eq!(mount["readOnly"], true);
        assert_eq!(cert, format!("{dir}/tls.crt"));
        assert_eq!(key, format!("{dir}/tls.key"));
        let vol = pod_spec(d)["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "c2pa")
            .expect("volume");
        assert_eq!(vol["secret"]["secretName"], "c2pa-signing");
    }
    // Without a Secret: signing stays on with a development certificate.
    for d in servers(&support::cpu()) {
        let c = &containers(d)[0];
        assert_eq!(env_of(c, "ANYACCEL_C2PA"), Some("on"));
        assert_eq!(env_of(c, "ANYACCEL_C2PA_CERT"), None);
    }
    let off = support::render_str(&format!("{}\n[c2pa]\nenabled = false\n", support::MINIMAL));
    for d in servers(&off) {
        assert_eq!(env_of(&containers(d)[0], "ANYACCEL_C2PA"), Some("off"));
    }
    let bad = anyaccel_deploy::ClusterConfig::from_toml_str(&format!(
        "{}\n[c2pa]\nenabled = false\nsecret = \"Bad_Name\"\n",
        support::MINIMAL
    ))
    .expect_err("bad c2pa");
    let p = bad.problems();
    assert!(
        p.iter()
            .any(|m| m.contains("c2pa.secret \"Bad_Name\" is not a valid Secret name")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|m| m.contains("c2pa.secret does nothing with c2pa.enabled = false")),
        "{p:?}"
    );
}
