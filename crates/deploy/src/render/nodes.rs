//! The nodes of one pool: Karpenter NodePool and EC2NodeClass.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Taint;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{
    ACCELERATOR_LABEL, LABEL_ACCELERATOR_MANUFACTURER, LABEL_GPU_MANUFACTURER, POOL_LABEL, meta,
    node_pool_name, pool_labels,
};
use crate::config::{AcceleratorKind, ClusterConfig, InstanceSelector, Pool};
use crate::crd::{
    AmiSelectorTerm, BlockDevice, BlockDeviceMapping, Budget, ConsolidationPolicy, CrdKind,
    Disruption, DisruptionReason, Ec2NodeClass, Ec2NodeClassSpec, HttpTokens, MetadataOptions,
    NodeClaimTemplate, NodeClaimTemplateMetadata, NodeClaimTemplateSpec, NodeClassReference,
    NodePool, NodePoolSpec, NodeSelectorRequirementWithMinValues as Req, SecurityGroupSelectorTerm,
    SubnetSelectorTerm, Toggle, VolumeType,
};

/// Karpenter node labels the NodePool requirements use.
const LABEL_INSTANCE_FAMILY: &str = "karpenter.k8s.aws/instance-family";
const LABEL_INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";

fn requirements(pool: &Pool) -> Vec<Req> {
    let mut r = vec![
        Req::is_in("kubernetes.io/arch", vec![pool.accelerator().arch().into()]),
        Req::is_in("kubernetes.io/os", vec!["linux".into()]),
        Req::is_in(
            "karpenter.sh/capacity-type",
            pool.capacity().karpenter_values(),
        ),
        match pool.instances() {
            InstanceSelector::Families(f) => Req::is_in(LABEL_INSTANCE_FAMILY, f.clone()),
            InstanceSelector::Types(t) => Req::is_in(LABEL_INSTANCE_TYPE, t.clone()),
        },
    ];
    // The hardware itself, so a broad family list can never yield a node
    // without the device (or a CPU pool a node that pays for one).
    match pool.accelerator() {
        AcceleratorKind::Nvidia => {
            r.push(Req::is_in(LABEL_GPU_MANUFACTURER, vec!["nvidia".into()]))
        }
        AcceleratorKind::Neuron => r.push(Req::is_in(
            LABEL_ACCELERATOR_MANUFACTURER,
            vec!["aws".into()],
        )),
        AcceleratorKind::CpuAmd64 | AcceleratorKind::CpuArm64 => {
            r.push(Req::absent(LABEL_GPU_MANUFACTURER));
            r.push(Req::absent(LABEL_ACCELERATOR_MANUFACTURER));
        }
    }
    r
}

/// Taints on a pool's nodes: every pool's nodes carry `anyaccel.io/pool`,
/// so no other workload's pending pod makes Karpenter launch (or fill) an
/// inference node; GPU and Neuron nodes also carry the device taint the
/// device plugins tolerate.
pub fn node_taints(pool: &Pool) -> Vec<Taint> {
    let mut t = vec![Taint {
        key: POOL_LABEL.into(),
        value: Some(pool.name().into()),
        effect: "NoSchedule".into(),
        ..Default::default()
    }];
    if let Some(device) = pool.accelerator().device_resource() {
        t.push(Taint {
            key: device.into(),
            value: None,
            effect: "NoSchedule".into(),
            ..Default::default()
        });
    }
    t
}

/// NodePool limits. Accelerator pools are capped by device count, CPU pools
/// by vCPUs. The cap covers max_replicas plus the 25% rolling-update surge
/// (else a rollout at full size would stall); CPU pools get twice the pods'
/// CPU since nodes also run DaemonSets and rarely pack perfectly.
pub fn node_limits(pool: &Pool) -> BTreeMap<String, Quantity> {
    let with_surge = pool.max_replicas() + pool.max_replicas().div_ceil(4);
    match pool.accelerator().device_resource() {
        Some(device) => BTreeMap::from([(
            device.to_string(),
            Quantity((with_surge * pool.resources().devices).to_string()),
        )]),
        None => {
            let per_pod = cpu_cores(&pool.resources().cpu);
            let cores = (per_pod * f64::from(with_surge) * 2.0).ceil().max(1.0);
            BTreeMap::from([("cpu".to_string(), Quantity(format!("{cores}")))])
        }
    }
}

/// Cores in a CPU quantity ("3", "3500m", "0.5").
fn cpu_cores(q: &str) -> f64 {
    match q.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().map_or(1.0, |m| m / 1000.0),
        None => q.parse::<f64>().unwrap_or(1.0),
    }
}

pub fn node_pool(cfg: &ClusterConfig, pool: &Pool) -> NodePool {
    let name = node_pool_name(cfg, pool);
    let accelerated = pool.accelerator().device_resource().is_some();
    let labels = BTreeMap::from([
        (POOL_LABEL.to_string(), pool.name().to_string()),
        (
            ACCELERATOR_LABEL.to_string(),
            pool.accelerator().as_str().to_string(),
        ),
    ]);
    NodePool::new(
        meta(&name, None, pool_labels(pool, "nodes")),
        NodePoolSpec {
            template: NodeClaimTemplate {
                metadata: Some(NodeClaimTemplateMetadata {
                    labels,
                    annotations: BTreeMap::new(),
                }),
                spec: NodeClaimTemplateSpec {
                    node_class_ref: NodeClassReference {
                        group: Ec2NodeClassSpec::GROUP.into(),
                        kind: Ec2NodeClassSpec::KIND.into(),
                        name: name.clone(),
                    },
                    requirements: requirements(pool),
                    taints: node_taints(pool),
                    startup_taints: Vec::new(),
                    // Monthly node replacement picks up patched AMIs.
                    expire_after: Some("720h".into()),
                    // Upper bound on a node drain: well past any pod's grace
                    // period, so a stuck eviction cannot pin a node forever.
                    termination_grace_period: Some("30m".into()),
                },
            },
            disruption: Some(Disruption {
                // GPU/Neuron nodes run one or few replicas each, so they are
                // either busy or empty; repacking them would only restart
                // replicas. CPU nodes hold several and repack usefully.
                consolidation_policy: Some(if accelerated {
                    ConsolidationPolicy::WhenEmpty
                } else {
                    ConsolidationPolicy::WhenEmptyOrUnderutilized
                }),
                // Longer than the HPA scale-down window's tail, so a node
                // emptied by a dip survives the next wave.
                consolidate_after: if accelerated {
                    "10m".into()
                } else {
                    "5m".into()
                },
                budgets: vec![
                    Budget {
                        nodes: "10%".into(),
                        reasons: Vec::new(),
                        schedule: None,
                        duration: None,
                    },
                    // AMI or config drift replaces one node at a time.
                    Budget {
                        nodes: "1".into(),
                        reasons: vec![DisruptionReason::Drifted],
                        schedule: None,
                        duration: None,
                    },
                ],
            }),
            limits: node_limits(pool),
            weight: pool.node_pool_weight().map(i32::from),
        },
    )
}

pub fn ec2_node_class(cfg: &ClusterConfig, pool: &Pool) -> Ec2NodeClass {
    let name = node_pool_name(cfg, pool);
    let accelerated = pool.accelerator().device_resource().is_some();
    let discovery = BTreeMap::from([(
        "karpenter.sh/discovery".to_string(),
        cfg.cluster_name().to_string(),
    )]);
    Ec2NodeClass::new(
        meta(&name, None, pool_labels(pool, "nodes")),
        Ec2NodeClassSpec {
            role: cfg.node_role().into(),
            // AL2023: Karpenter resolves the NVIDIA or Neuron variant of the
            // EKS-optimized AMI for accelerated instance types by itself.
            ami_selector_terms: vec![AmiSelectorTerm {
                alias: Some(cfg.ami_alias().into()),
                ..Default::default()
            }],
            subnet_selector_terms: vec![SubnetSelectorTerm {
                tags: discovery.clone(),
                ..Default::default()
            }],
            security_group_selector_terms: vec![SecurityGroupSelectorTerm {
                tags: discovery,
                ..Default::default()
            }],
            block_device_mappings: vec![BlockDeviceMapping {
                device_name: Some("/dev/xvda".into()),
                ebs: Some(BlockDevice {
                    volume_size: Some(format!("{}Gi", pool.root_volume_gib())),
                    volume_type: Some(VolumeType::Gp3),
                    encrypted: Some(true),
                    delete_on_termination: Some(true),
                    // Multi-GB CUDA/Neuron images and model downloads are
                    // the cold start; faster gp3 shortens it for cents.
                    iops: accelerated.then_some(6000),
                    throughput: accelerated.then_some(500),
                    ..Default::default()
                }),
                root_volume: Some(true),
            }],
            // IMDSv2 only, and out of reach of pods (hop limit 1): pods get
            // AWS credentials from pod identity, never the node role.
            metadata_options: Some(MetadataOptions {
                http_endpoint: Some(Toggle::Enabled),
                http_protocol_ipv6: Some(Toggle::Disabled),
                http_put_response_hop_limit: Some(1),
                http_tokens: Some(HttpTokens::Required),
            }),
            tags: BTreeMap::from([
                ("anyaccel.io/pool".to_string(), pool.name().to_string()),
                (
                    "anyaccel.io/namespace".to_string(),
                    cfg.namespace().to_string(),
                ),
            ]),
            detailed_monitoring: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities() {
        assert_eq!(cpu_cores("3"), 3.0);
        assert_eq!(cpu_cores("3500m"), 3.5);
        assert_eq!(cpu_cores("0.5"), 0.5);
    }
}
