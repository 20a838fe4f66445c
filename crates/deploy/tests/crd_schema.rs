//! Custom resources against the pinned CRDs (deploy/crds): every rendered
//! ScaledObject, TriggerAuthentication, NodePool and EC2NodeClass, and the
//! typed structs themselves with every field set.

mod support;

use std::collections::BTreeMap;

use anyaccel_deploy::crd::*;
use anyaccel_deploy::keda::ScalerType;
use k8s_openapi::api::autoscaling::v2::{
    HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscalerBehavior,
};
use k8s_openapi::api::core::v1::Taint;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Serialize;
use serde_json::{Value, json};
use support::schema::{Report, crd_for, crds, schema_at, validate_at, validate_object};

fn is_custom(o: &anyaccel_deploy::RenderedObject) -> bool {
    o.group() == "keda.sh" || o.group().starts_with("karpenter.")
}

fn assert_valid(what: &str, r: &Report) {
    assert!(
        r.errors.is_empty(),
        "{what} is rejected by its CRD:\n  {}",
        r.errors.join("\n  ")
    );
}

fn to_value<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).expect("serialize")
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(str::to_string),
        ..Default::default()
    }
}

#[test]
fn pinned_crds_are_the_expected_releases() {
    let files: Vec<&str> = crds().iter().map(|c| c.file.as_str()).collect();
    for f in [
        "keda.sh_scaledobjects.yaml",
        "keda.sh_triggerauthentications.yaml",
        "karpenter.sh_nodepools.yaml",
        "karpenter.k8s.aws_ec2nodeclasses.yaml",
    ] {
        assert!(files.contains(&f), "deploy/crds/{f} missing");
    }
    let readme = std::fs::read_to_string(support::repo_root().join("deploy/crds/README.md"))
        .expect("deploy/crds/README.md");
    assert!(readme.contains("v2.20.2") && readme.contains("v1.14.1"));
}

/// A value of the shape `schema` describes, with every property present, so
/// a rule evaluated on it touches every field and function it names.
fn sample(schema: &Value) -> Value {
    if schema["x-kubernetes-int-or-string"] == json!(true) {
        return json!("1");
    }
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    match schema["type"].as_str() {
        Some("object") => {
            let mut m = serde_json::Map::new();
            if let Some(props) = schema["properties"].as_object() {
                for (k, sub) in props {
                    m.insert(k.clone(), sample(sub));
                }
            } else if schema["additionalProperties"].is_object() {
                m.insert("k".into(), sample(&schema["additionalProperties"]));
            }
            Value::Object(m)
        }
        Some("array") => json!([sample(&schema["items"])]),
        Some("integer") | Some("number") => json!(1),
        Some("boolean") => json!(true),
        // Numeric text satisfies int() in the requirement rules.
        _ => json!("1"),
    }
}

/// Every CEL rule of every pinned CRD parses and runs in our evaluator on a
/// value of its field's shape (true or false, but no unknown function, no
/// type error), so "validated with CEL" covers all of them, not a subset.
#[test]
fn every_cel_rule_in_the_pinned_crds_is_understood() {
    fn walk(s: &Value, counts: &mut BTreeMap<String, usize>, kind: &str) {
        match s {
            Value::Object(m) => {
                if let Some(Value::Array(v)) = m.get("x-kubernetes-validations") {
                    let value = sample(s);
                    for r in v {
                        *counts.entry(kind.to_string()).or_default() += 1;
                        let rule = r["rule"].as_str().unwrap_or("");
                        if support::cel_rules::is_transition_rule(rule) {
                            continue;
                        }
                        if let Err(e) = support::cel_rules::evaluate(rule, &value) {
                            assert!(
                                e.starts_with("evaluated to Bool"),
                                "{kind}: {rule}\n  on {value}\n  -> {e}"
                            );
                        }
                    }
                }
                m.values().for_each(|c| walk(c, counts, kind));
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, counts, kind)),
            _ => {}
        }
    }
    let mut counts = BTreeMap::new();
    for crd in crds() {
        for (_, schema) in &crd.versions {
            walk(schema, &mut counts, &crd.kind);
        }
    }
    // The README's counts (NodePool 20, EC2NodeClass 54, ScaledObject 1).
    assert_eq!(counts["NodePool"], 20);
    assert_eq!(counts["EC2NodeClass"], 54);
    assert_eq!(counts["ScaledObject"], 1);
}

#[test]
fn rendered_custom_resources_validate_against_the_pinned_crds() {
    let mut cel = 0;
    let mut kinds = std::collections::BTreeSet::new();
    for path in support::example_configs() {
        for o in support::render_example(&path)
            .iter()
            .filter(|o| is_custom(o))
        {
            let r = validate_object(o.value());
            assert_valid(&format!("{} ({})", o.id(), path.display()), &r);
            cel += r.cel_evaluated;
            kinds.insert(o.kind().to_string());
        }
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "EC2NodeClass",
            "NodePool",
            "ScaledObject",
            "TriggerAuthentication"
        ]
    );
    // NodePool and EC2NodeClass rules apply to fields we set.
    assert!(cel > 100, "only {cel} CEL rules evaluated");
}

#[test]
fn the_validator_rejects_what_the_api_server_rejects() {
    let objs = support::seed();
    let np = support::find(&objs, "NodePool", "anyaccel-g5")
        .value()
        .clone();
    let nc = support::find(&objs, "EC2NodeClass", "anyaccel-g5")
        .value()
        .clone();
    let so = support::find(&objs, "ScaledObject", "anyaccel-g5")
        .value()
        .clone();
    assert_valid("seed NodePool", &validate_object(&np));

    let rejected = |mut v: Value, f: &dyn Fn(&mut Value), expect: &str| {
        f(&mut v);
        let r = validate_object(&v);
        assert!(
            r.errors.iter().any(|e| e.contains(expect)),
            "expected an error containing {expect:?}, got {:?}",
            r.errors
        );
    };
    // Structural checks.
    rejected(
        np.clone(),
        &|v| v["spec"]["bogus"] = json!(1),
        "unknown field \"bogus\"",
    );
    rejected(
        np.clone(),
        &|v| v["spec"]["weight"] = json!(0),
        "below the minimum",
    );
    rejected(
        np.clone(),
        &|v| v["spec"]["weight"] = json!("10"),
        "expected integer",
    );
    rejected(
        np.clone(),
        &|v| v["spec"]["disruption"]["budgets"][0]["nodes"] = json!("ten"),
        "does not match pattern",
    );
    rejected(
        np.clone(),
        &|v| v["spec"]["disruption"]["consolidationPolicy"] = json!("Always"),
        "is not one of",
    );
    rejected(
        np.clone(),
        &|v| v["spec"]["limits"]["cpu"] = json!(true),
        "expected integer or string",
    );
    rejected(
        np.clone(),
        &|v| {
            v["spec"]["template"]["spec"]
                .as_object_mut()
                .expect("spec")
                .remove("nodeClassRef");
        },
        "missing required field \"nodeClassRef\"",
    );
    // CEL rules.
    rejected(
        np.clone(),
        &|v| v["spec"]["template"]["metadata"]["labels"]["karpenter.sh/nodepool"] = json!("x"),
        "CEL rule failed",
    );
    rejected(
        np.clone(),
        &|v| v["spec"]["template"]["spec"]["requirements"][0]["values"] = json!([]),
        "CEL rule failed",
    );
    rejected(
        np.clone(),
        &|v| {
            v["spec"]["template"]["spec"]["requirements"][0]["key"] =
                json!("karpenter.sh/unknown-label")
        },
        "CEL rule failed",
    );
    rejected(
        np.clone(),
        &|v| v["spec"]["disruption"]["budgets"][0]["schedule"] = json!("@daily"),
        "CEL rule failed",
    );
    rejected(
        nc.clone(),
        &|v| v["spec"]["amiSelectorTerms"][0]["alias"] = json!("ubuntu@latest"),
        "CEL rule failed",
    );
    rejected(
        nc.clone(),
        &|v| v["spec"]["amiSelectorTerms"][0]["id"] = json!("ami-123"),
        "CEL rule failed",
    );
    rejected(
        nc.clone(),
        &|v| v["spec"]["instanceProfile"] = json!("profile"),
        "CEL rule failed",
    );
    rejected(
        nc.clone(),
        &|v| v["spec"]["tags"]["karpenter.sh/nodepool"] = json!("x"),
        "CEL rule failed",
    );
    rejected(
        so.clone(),
        &|v| {
            v["spec"]["minReplicaCount"] = json!(5);
            v["spec"]["maxReplicaCount"] = json!(2);
        },
        "CEL rule failed",
    );
    rejected(
        so,
        &|v| v["spec"]["triggers"] = json!([]),
        "fewer than 1 items",
    );
}

// ---------------------------------------------------------------------------
// The typed structs, field by field: a value with every field filled in must
// validate, so no field name or type can drift from the CRD.

fn full_behavior() -> HorizontalPodAutoscalerBehavior {
    let rules = HPAScalingRules {
        policies: Some(vec![HPAScalingPolicy {
            type_: "Pods".into(),
            value: 2,
            period_seconds: 60,
        }]),
        select_policy: Some("Max".into()),
        stabilization_window_seconds: Some(30),
        tolerance: Some(Quantity("0.1".into())),
    };
    HorizontalPodAutoscalerBehavior {
        scale_up: Some(rules.clone()),
        scale_down: Some(rules),
    }
}

fn full_scaled_object() -> ScaledObject {
    ScaledObject::new(
        meta("full", Some("ns")),
        ScaledObjectSpec {
            scale_target_ref: ScaleTargetRef {
                api_version: Some("apps/v1".into()),
                kind: Some("Deployment".into()),
                name: "web".into(),
                env_source_container_name: Some("server".into()),
            },
            polling_interval: Some(15),
            cooldown_period: Some(300),
            initial_cooldown_period: Some(60),
            idle_replica_count: Some(0),
            min_replica_count: Some(1),
            max_replica_count: Some(10),
            fallback: Some(Fallback {
                failure_threshold: 3,
                replicas: 2,
                behavior: Some(FallbackBehavior::CurrentReplicasIfHigher),
            }),
            advanced: Some(AdvancedConfig {
                horizontal_pod_autoscaler_config: Some(HorizontalPodAutoscalerConfig {
                    name: Some("custom-hpa".into()),
                    behavior: Some(full_behavior()),
                }),
                restore_to_original_replica_count: Some(true),
            }),
            triggers: vec![ScaleTrigger {
                type_: ScalerType::Prometheus,
                name: Some("t".into()),
                metadata: BTreeMap::from([("query".into(), "up".into())]),
                metric_type: Some(MetricTargetType::AverageValue),
                authentication_ref: Some(AuthenticationRef {
                    name: "auth".into(),
                    kind: Some(AuthenticationKind::ClusterTriggerAuthentication),
                }),
                use_cached_metrics: true,
            }],
        },
    )
}

fn full_trigger_auth() -> TriggerAuthentication {
    TriggerAuthentication::new(
        meta("full", Some("ns")),
        TriggerAuthenticationSpec {
            pod_identity: Some(PodIdentity {
                provider: PodIdentityProvider::Aws,
                role_arn: Some("arn:aws:iam::123456789012:role/r".into()),
                identity_owner: Some(IdentityOwner::Workload),
            }),
            secret_target_ref: vec![AuthSecretTargetRef {
                parameter: "password".into(),
                name: "redis-auth".into(),
                key: "password".into(),
            }],
        },
    )
}

fn full_node_pool() -> NodePool {
    let taint = Taint {
        key: "example.com/t".into(),
        value: Some("v".into()),
        effect: "NoSchedule".into(),
        time_added: Some(Time("2025-01-01T00:00:00Z".parse().expect("timestamp"))),
    };
    NodePool::new(
        meta("full", None),
        NodePoolSpec {
            template: NodeClaimTemplate {
                metadata: Some(NodeClaimTemplateMetadata {
                    labels: BTreeMap::from([("team".into(), "ml".into())]),
                    annotations: BTreeMap::from([("note".into(), "x".into())]),
                }),
                spec: NodeClaimTemplateSpec {
                    node_class_ref: NodeClassReference {
                        group: "karpenter.k8s.aws".into(),
                        kind: "EC2NodeClass".into(),
                        name: "default".into(),
                    },
                    requirements: vec![
                        NodeSelectorRequirementWithMinValues {
                            key: "karpenter.k8s.aws/instance-family".into(),
                            operator: RequirementOperator::In,
                            values: vec!["g5".into(), "g6".into()],
                            min_values: Some(2),
                        },
                        NodeSelectorRequirementWithMinValues {
                            key: "karpenter.k8s.aws/instance-gpu-count".into(),
                            operator: RequirementOperator::Gt,
                            values: vec!["0".into()],
                            min_values: None,
                        },
                    ],
                    taints: vec![taint.clone()],
                    startup_taints: vec![taint],
                    expire_after: Some("720h".into()),
                    termination_grace_period: Some("1h".into()),
                },
            },
            disruption: Some(Disruption {
                consolidation_policy: Some(ConsolidationPolicy::WhenEmpty),
                consolidate_after: "5m".into(),
                budgets: vec![Budget {
                    nodes: "10%".into(),
                    reasons: vec![DisruptionReason::Drifted, DisruptionReason::Empty],
                    schedule: Some("0 9 * * mon-fri".into()),
                    duration: Some("8h".into()),
                }],
            }),
            limits: BTreeMap::from([("cpu".into(), Quantity("100".into()))]),
            weight: Some(50),
        },
    )
}

fn full_node_class(ami: Vec<AmiSelectorTerm>) -> Ec2NodeClass {
    Ec2NodeClass::new(
        meta("full", None),
        Ec2NodeClassSpec {
            role: "KarpenterNodeRole".into(),
            ami_selector_terms: ami,
            subnet_selector_terms: vec![
                SubnetSelectorTerm {
                    id: Some("subnet-0123".into()),
                    ..Default::default()
                },
                SubnetSelectorTerm {
                    tags: BTreeMap::from([("k".into(), "v".into())]),
                    ..Default::default()
                },
            ],
            security_group_selector_terms: vec![
                SecurityGroupSelectorTerm {
                    id: Some("sg-0123".into()),
                    ..Default::default()
                },
                SecurityGroupSelectorTerm {
                    name: Some("default".into()),
                    ..Default::default()
                },
                SecurityGroupSelectorTerm {
                    tags: BTreeMap::from([("k".into(), "v".into())]),
                    ..Default::default()
                },
            ],
            block_device_mappings: vec![BlockDeviceMapping {
                device_name: Some("/dev/xvda".into()),
                ebs: Some(BlockDevice {
                    delete_on_termination: Some(true),
                    encrypted: Some(true),
                    iops: Some(3000),
                    kms_key_id: Some("arn:aws:kms:us-west-2:123456789012:key/k".into()),
                    snapshot_id: Some("snap-0123".into()),
                    throughput: Some(125),
                    volume_size: Some("100Gi".into()),
                    volume_type: Some(VolumeType::Gp3),
                }),
                root_volume: Some(true),
            }],
            metadata_options: Some(MetadataOptions {
                http_endpoint: Some(Toggle::Enabled),
                http_protocol_ipv6: Some(Toggle::Disabled),
                http_put_response_hop_limit: Some(2),
                http_tokens: Some(HttpTokens::Required),
            }),
            tags: BTreeMap::from([("team".into(), "ml".into())]),
            detailed_monitoring: Some(true),
        },
    )
}

#[test]
fn typed_structs_with_every_field_set_validate() {
    assert_valid(
        "ScaledObject",
        &validate_object(&to_value(&full_scaled_object())),
    );
    assert_valid(
        "TriggerAuthentication",
        &validate_object(&to_value(&full_trigger_auth())),
    );
    assert_valid("NodePool", &validate_object(&to_value(&full_node_pool())));
    assert_valid(
        "EC2NodeClass (alias)",
        &validate_object(&to_value(&full_node_class(vec![AmiSelectorTerm {
            alias: Some("al2023@latest".into()),
            ..Default::default()
        }]))),
    );
    // The other AMI selector fields: the CRD's CEL rules forbid mixing them
    // with an alias and require amiFamily without one (a field we never
    // set), so they are checked against the amiSelectorTerms schema alone.
    let nc_schema = crd_for("karpenter.k8s.aws", "EC2NodeClass")
        .schema("v1")
        .expect("v1");
    let terms = vec![
        AmiSelectorTerm {
            id: Some("ami-0123".into()),
            ..Default::default()
        },
        AmiSelectorTerm {
            name: Some("my-ami".into()),
            owner: Some("self".into()),
            ..Default::default()
        },
        AmiSelectorTerm {
            tags: BTreeMap::from([("k".into(), "v".into())]),
            ..Default::default()
        },
        AmiSelectorTerm {
            ssm_parameter: Some("/aws/service/x".into()),
            ..Default::default()
        },
    ];
    assert_valid(
        "amiSelectorTerms",
        &validate_at(
            schema_at(nc_schema, "spec.amiSelectorTerms"),
            &to_value(&terms),
            "spec.amiSelectorTerms",
        ),
    );
}

#[test]
fn typed_structs_round_trip_and_reject_unknown_fields() {
    let so = full_scaled_object();
    let back: ScaledObject = serde_json::from_value(to_value(&so)).expect("round trip");
    assert_eq!(back, so);
    let mut v = to_value(&full_node_pool());
    v["spec"]["surprise"] = json!(true);
    assert!(serde_json::from_value::<NodePool>(v).is_err());
}

/// Every Rust enum spells exactly values the CRD's enum allows.
#[test]
fn rust_enums_spell_crd_enum_values() {
    fn spelled<T: Serialize>(variants: &[T]) -> Vec<Value> {
        variants.iter().map(|v| to_value(v)).collect()
    }
    // (group, kind, path, our spellings, whether ours cover the whole set)
    let cases: Vec<(&str, &str, &str, Vec<Value>, bool)> = vec![
        (
            "keda.sh",
            "ScaledObject",
            "spec.fallback.behavior",
            spelled(&[
                FallbackBehavior::Static,
                FallbackBehavior::CurrentReplicas,
                FallbackBehavior::CurrentReplicasIfHigher,
                FallbackBehavior::CurrentReplicasIfLower,
                FallbackBehavior::ScalingModifiers,
            ]),
            true,
        ),
        (
            "keda.sh",
            "ScaledObject",
            "spec.advanced.scalingModifiers.metricType",
            spelled(&[MetricTargetType::AverageValue, MetricTargetType::Value]),
            true,
        ),
        (
            "keda.sh",
            "ScaledObject",
            "spec.triggers[].authenticationRef.kind",
            spelled(&[
                AuthenticationKind::TriggerAuthentication,
                AuthenticationKind::ClusterTriggerAuthentication,
            ]),
            true,
        ),
        (
            "keda.sh",
            "TriggerAuthentication",
            "spec.podIdentity.provider",
            spelled(&[PodIdentityProvider::Aws, PodIdentityProvider::None]),
            // AWS-only renderer: the Azure and GCP providers are left out.
            false,
        ),
        (
            "keda.sh",
            "TriggerAuthentication",
            "spec.podIdentity.identityOwner",
            spelled(&[IdentityOwner::Keda, IdentityOwner::Workload]),
            true,
        ),
        (
            "karpenter.sh",
            "NodePool",
            "spec.template.spec.requirements[].operator",
            spelled(&[
                RequirementOperator::In,
                RequirementOperator::NotIn,
                RequirementOperator::Exists,
                RequirementOperator::DoesNotExist,
                RequirementOperator::Gt,
                RequirementOperator::Lt,
                RequirementOperator::Gte,
                RequirementOperator::Lte,
            ]),
            true,
        ),
        (
            "karpenter.sh",
            "NodePool",
            "spec.disruption.consolidationPolicy",
            spelled(&[
                ConsolidationPolicy::WhenEmpty,
                ConsolidationPolicy::WhenEmptyOrUnderutilized,
                ConsolidationPolicy::Balanced,
            ]),
            true,
        ),
        (
            "karpenter.sh",
            "NodePool",
            "spec.disruption.budgets[].reasons[]",
            spelled(&[
                DisruptionReason::Underutilized,
                DisruptionReason::Empty,
                DisruptionReason::Drifted,
            ]),
            true,
        ),
        (
            "karpenter.k8s.aws",
            "EC2NodeClass",
            "spec.blockDeviceMappings[].ebs.volumeType",
            spelled(&[
                VolumeType::Standard,
                VolumeType::Io1,
                VolumeType::Io2,
                VolumeType::Gp2,
                VolumeType::Sc1,
                VolumeType::St1,
                VolumeType::Gp3,
            ]),
            true,
        ),
        (
            "karpenter.k8s.aws",
            "EC2NodeClass",
            "spec.metadataOptions.httpEndpoint",
            spelled(&[Toggle::Enabled, Toggle::Disabled]),
            true,
        ),
        (
            "karpenter.k8s.aws",
            "EC2NodeClass",
            "spec.metadataOptions.httpProtocolIPv6",
            spelled(&[Toggle::Enabled, Toggle::Disabled]),
            true,
        ),
        (
            "karpenter.k8s.aws",
            "EC2NodeClass",
            "spec.metadataOptions.httpTokens",
            spelled(&[HttpTokens::Required, HttpTokens::Optional]),
            true,
        ),
    ];
    for (group, kind, path, values, complete) in cases {
        let crd = crd_for(group, kind);
        let (version, schema) = &crd.versions[0];
        let allowed = schema_at(schema, path)["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{kind} {version} {path} has no enum"))
            .clone();
        for v in &values {
            assert!(allowed.contains(v), "{kind} {path}: {v} not in {allowed:?}");
        }
        // Closed sets are complete, so a value the CRD allows is expressible.
        if complete {
            assert_eq!(values.len(), allowed.len(), "{kind} {path}: {allowed:?}");
        }
    }
}
