//! From inputs to the plan: capacity and cost per image per pool, Karpenter
//! and ingress weights, KEDA targets, the cheapest mix at the peak and over
//! a demand profile.

use super::{
    CapacityType, Excluded, MAX_REPLICAS_LIMIT, Mix, MixPool, Plan, PlanInputs, PoolPlan,
    ProfileCost, WeightMode, cheapest_mix, round,
};
use crate::BenchError;
use crate::result::{fmt_num, now_rfc3339};
use crate::stats::{LevelPoint, breaking_point};
use anyaccel_deploy::fleet::ALB_MAX_WEIGHT;
use anyaccel_deploy::plan::plan_weight_total;

/// Karpenter NodePool weights by rank: the cheapest gets 100, each next
/// step down by 10 (or less with more than 10 pools), at least 1; equal
/// costs share a weight. `costs` must be sorted ascending.
pub fn node_pool_weights(costs: &[f64]) -> Vec<u32> {
    let n = costs.len();
    let step = if n > 10 {
        (99 / (n as u32 - 1)).max(1)
    } else {
        10
    };
    let mut out = Vec::with_capacity(n);
    let mut rank = 0u32;
    for (i, c) in costs.iter().enumerate() {
        if i > 0 && !same_cost(*c, costs[i - 1]) {
            rank = i as u32;
        }
        out.push(100u32.saturating_sub(rank * step).max(1));
    }
    out
}

fn same_cost(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-12)
}

/// Integer weights summing to `total` in proportion to `shares` (largest
/// remainder). Every entry gets at least `min`; none more than `max`.
pub fn proportional_weights(shares: &[f64], total: u32, min: u32, max: u32) -> Vec<u32> {
    let n = shares.len() as u32;
    if n == 0 {
        return Vec::new();
    }
    let positive: f64 = shares.iter().filter(|s| **s > 0.0).sum();
    let zero_count = shares.iter().filter(|s| **s <= 0.0).count() as u32;
    // Pools with no share get the minimum; the rest split what remains.
    let pool_total = total.saturating_sub(zero_count * min);
    let mut w: Vec<u32> = vec![min; shares.len()];
    if positive > 0.0 {
        let exact: Vec<f64> = shares
            .iter()
            .map(|s| {
                if *s > 0.0 {
                    s / positive * f64::from(pool_total)
                } else {
                    0.0
                }
            })
            .collect();
        let mut assigned = 0u32;
        for (i, e) in exact.iter().enumerate() {
            if shares[i] > 0.0 {
                w[i] = e.floor() as u32;
                assigned += w[i];
            }
        }
        let mut order: Vec<usize> = (0..shares.len()).filter(|&i| shares[i] > 0.0).collect();
        order.sort_by(|&a, &b| {
            let ra = exact[a] - exact[a].floor();
            let rb = exact[b] - exact[b].floor();
            rb.total_cmp(&ra).then(a.cmp(&b))
        });
        let mut left = pool_total.saturating_sub(assigned);
        for &i in order.iter().cycle().take(order.len() * 2) {
            if left == 0 {
                break;
            }
            w[i] += 1;
            left -= 1;
        }
    }
    for x in &mut w {
        *x = (*x).clamp(min, max);
    }
    w
}

/// Computes the plan. Errors for inputs that cannot be planned at all (a
/// pool without a price); an SLO or demand nobody meets gives a plan whose
/// `infeasible` says why.
pub fn compute(inp: &PlanInputs) -> Result<Plan, BenchError> {
    let mut notes = Vec::new();
    let mut feasible: Vec<PoolPlan> = Vec::new();
    let mut excluded = Vec::new();
    let known: Vec<&str> = inp.prices.instances.keys().map(String::as_str).collect();
    for p in &inp.pools {
        let price = inp.prices.instances.get(&p.instance_type);
        let Some(price) = price else {
            return Err(BenchError::NoPrice {
                pool: p.name.clone(),
                instance_type: p.instance_type.clone(),
                prices: inp.prices_path.clone(),
                hint: format!(
                    "; add [instances.\"{}\"] with on_demand (and spot) $/hour (it prices: {})",
                    p.instance_type,
                    if known.is_empty() {
                        "nothing".into()
                    } else {
                        known.join(", ")
                    }
                ),
            });
        };
        let per_hour = match inp.capacity_type {
            CapacityType::OnDemand => price.on_demand,
            CapacityType::Spot => price.spot,
        };
        let Some(per_hour) = per_hour else {
            return Err(BenchError::NoPrice {
                pool: p.name.clone(),
                instance_type: p.instance_type.clone(),
                prices: inp.prices_path.clone(),
                hint: format!(
                    " for {} capacity; add {} to [instances.\"{}\"] or plan with the other --capacity-type",
                    inp.capacity_type.as_str(),
                    match inp.capacity_type {
                        CapacityType::OnDemand => "on_demand",
                        CapacityType::Spot => "spot",
                    },
                    p.instance_type
                ),
            });
        };
        let pods_per_node = price.pods_per_node.unwrap_or(1).max(1);
        let available = inp
            .max_replicas
            .get(&p.name)
            .copied()
            .or_else(|| price.max_nodes.map(|n| n.saturating_mul(pods_per_node)));

        let points: Vec<LevelPoint> = p
            .levels
            .iter()
            .map(|l| LevelPoint {
                throughput: l.throughput,
                p95: l.p95_s,
                error_rate: l.error_rate,
            })
            .collect();
        let Some(bp) = breaking_point(&points, inp.slo_p95, inp.max_error_rate) else {
            let best_p95 = p
                .levels
                .iter()
                .filter(|l| l.error_rate <= inp.max_error_rate)
                .filter_map(|l| l.p95_s)
                .fold(f64::INFINITY, f64::min);
            let reason = if best_p95.is_finite() {
                format!(
                    "its best p95 is {} s, over the SLO of {} s",
                    fmt_num(best_p95),
                    fmt_num(inp.slo_p95)
                )
            } else {
                format!(
                    "no measured level succeeded with at most {}% errors",
                    fmt_num(inp.max_error_rate * 100.0)
                )
            };
            excluded.push(Excluded {
                name: p.name.clone(),
                instance_type: p.instance_type.clone(),
                reason,
            });
            continue;
        };
        if available == Some(0) {
            excluded.push(Excluded {
                name: p.name.clone(),
                instance_type: p.instance_type.clone(),
                reason: "no replicas available (max_nodes or --max-replicas is 0)".into(),
            });
            continue;
        }
        let level = &p.levels[bp];
        let capacity = level.throughput;
        let p95 = level.p95_s.unwrap_or(f64::NAN);
        // Mean latency, or the p95 if a heavy tail put the mean above it,
        // so the backlog target stays under the SLO.
        let mean = level.mean_s.unwrap_or(p95).min(p95);
        let replica_hour = per_hour / f64::from(pods_per_node);
        let target = capacity * (1.0 - inp.headroom);
        feasible.push(PoolPlan {
            name: p.name.clone(),
            instance_type: p.instance_type.clone(),
            accelerator: p.accelerator.clone(),
            price_per_hour: per_hour,
            pods_per_node,
            capacity_level: level.label.clone(),
            capacity_images_per_s: capacity,
            p95_s: p95,
            mean_latency_s: mean,
            cost_per_1000_images: replica_hour / (capacity * 3600.0) * 1000.0,
            cost_per_1000_images_at_target: replica_hour / (target * 3600.0) * 1000.0,
            target_images_per_s: target,
            target_backlog_secs: (1.0 - inp.headroom) * mean,
            node_pool_weight: 0,
            weight: 0,
            fallback_rank: 0,
            planned_replicas: 0,
            max_replicas: 0,
            available_replicas: available,
            capacity_mode_target_images_per_s: 0.0,
        });
    }
    feasible.sort_by(|a, b| {
        a.cost_per_1000_images
            .total_cmp(&b.cost_per_1000_images)
            .then(a.p95_s.total_cmp(&b.p95_s))
            .then(a.name.cmp(&b.name))
    });

    let mut plan = Plan {
        generated_at: now_rfc3339(),
        tool_version: crate::result::TOOL_VERSION.into(),
        currency: inp.prices.currency.clone(),
        prices_source: inp.prices.source.clone(),
        slo_p95_s: inp.slo_p95,
        headroom: inp.headroom,
        capacity_type: inp.capacity_type,
        weights_mode: inp.weights,
        demand: inp.demand.clone(),
        pools: Vec::new(),
        excluded,
        mix: None,
        profile_cost: None,
        infeasible: None,
        notes: Vec::new(),
    };
    if feasible.is_empty() {
        plan.infeasible = Some(format!(
            "no pool meets p95 ≤ {} s (all {} measured pools are over it or failing)",
            fmt_num(inp.slo_p95),
            plan.excluded.len()
        ));
        plan.notes = notes;
        return Ok(plan);
    }

    let mix_pools: Vec<MixPool> = feasible
        .iter()
        .map(|p| MixPool {
            price: p.price_per_hour / f64::from(p.pods_per_node),
            capacity: p.target_images_per_s,
            cap: p.available_replicas,
        })
        .collect();
    let names: Vec<String> = feasible.iter().map(|p| p.name.clone()).collect();
    let mix_at = |demand: f64| -> Option<Mix> {
        let (reps, cost, proven) = cheapest_mix(&mix_pools, demand)?;
        let capacity: f64 = reps
            .iter()
            .zip(&mix_pools)
            .map(|(r, p)| f64::from(*r) * p.capacity)
            .sum();
        Some(Mix {
            demand_images_per_s: demand,
            replicas: names
                .iter()
                .zip(&reps)
                .filter(|(_, r)| **r > 0)
                .map(|(n, r)| (n.clone(), *r))
                .collect(),
            cost_per_hour: cost,
            capacity_images_per_s: capacity,
            cost_per_1000_images: if demand > 0.0 {
                cost / (demand * 3600.0) * 1000.0
            } else {
                0.0
            },
            proven_optimal: proven,
        })
    };
    let Some(mix) = mix_at(inp.demand.peak) else {
        let total: f64 = mix_pools
            .iter()
            .map(|p| p.cap.map_or(f64::INFINITY, |c| f64::from(c) * p.capacity))
            .sum();
        plan.infeasible = Some(format!(
            "the demand of {} images/s is more than every available replica together sustains within the SLO ({} images/s at the KEDA targets); raise max_nodes / --max-replicas, lower --headroom, or relax the SLO",
            fmt_num(inp.demand.peak),
            fmt_num(round(total, 3))
        ));
        plan.pools = feasible;
        plan.notes = notes;
        return Ok(plan);
    };
    if !mix.proven_optimal {
        notes.push(
            "the mix search hit its node limit: the mix is the best found, not proven cheapest"
                .into(),
        );
    }

    // Karpenter weights and the fallback order follow cost.
    let costs: Vec<f64> = feasible.iter().map(|p| p.cost_per_1000_images).collect();
    for (p, w) in feasible.iter_mut().zip(node_pool_weights(&costs)) {
        p.node_pool_weight = w;
    }
    for (i, p) in feasible.iter_mut().enumerate() {
        p.fallback_rank = i + 1;
        p.planned_replicas = mix.replicas.get(&p.name).copied().unwrap_or(0);
        let need = (inp.demand.peak / p.target_images_per_s).ceil().max(1.0);
        let mut max = if need >= f64::from(MAX_REPLICAS_LIMIT) {
            MAX_REPLICAS_LIMIT
        } else {
            need as u32
        };
        if let Some(a) = p.available_replicas {
            max = max.min(a);
        }
        p.max_replicas = max.max(p.planned_replicas).max(1);
        if need > f64::from(MAX_REPLICAS_LIMIT) {
            notes.push(format!(
                "{}: {} replicas would carry the peak alone; max_replicas capped at {MAX_REPLICAS_LIMIT}",
                p.name, need
            ));
        }
    }

    // Ingress weights for cost mode.
    let shares: Vec<f64> = match inp.weights {
        WeightMode::Mix => feasible
            .iter()
            .map(|p| f64::from(p.planned_replicas) * p.target_images_per_s)
            .collect(),
        WeightMode::InverseCost => feasible
            .iter()
            .map(|p| 1.0 / p.cost_per_1000_images)
            .collect(),
    };
    // The total the renderer checks: 1000, or 999 for a lone pool.
    let total = plan_weight_total(feasible.len());
    for (p, w) in feasible.iter_mut().zip(proportional_weights(
        &shares,
        total,
        1,
        u32::from(ALB_MAX_WEIGHT),
    )) {
        p.weight = w;
    }

    // Capacity mode: the seed's adjusted throughput.
    let mean_cap = feasible
        .iter()
        .map(|p| p.capacity_images_per_s)
        .sum::<f64>()
        / feasible.len() as f64;
    for p in &mut feasible {
        p.capacity_mode_target_images_per_s = mean_cap.min(p.capacity_images_per_s);
    }

    if !inp.demand.profile.is_empty() {
        let mut hours = 0.0;
        let mut images = 0.0;
        let mut cost = 0.0;
        for &(h, d) in &inp.demand.profile {
            hours += h;
            images += d * h * 3600.0;
            if let Some(m) = mix_at(d) {
                cost += m.cost_per_hour * h;
            }
        }
        plan.profile_cost = Some(ProfileCost {
            hours,
            images,
            cost,
            cost_per_1000_images: if images > 0.0 {
                cost / images * 1000.0
            } else {
                0.0
            },
        });
    }
    if feasible.len() > 5 {
        notes.push(format!(
            "{} pools are feasible; an ALB forward action takes at most 5 target groups, and `deploy render --plan` renders every planned pool: re-plan with the results of the 5 you deploy (the cheapest come first)",
            feasible.len()
        ));
    }
    plan.pools = feasible;
    plan.mix = Some(mix);
    plan.notes = notes;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_pool_weights_follow_rank_and_share_ties() {
        assert_eq!(node_pool_weights(&[1.0, 2.0, 3.0]), vec![100, 90, 80]);
        assert_eq!(node_pool_weights(&[1.0, 1.0, 3.0]), vec![100, 100, 80]);
        let many: Vec<f64> = (0..12).map(f64::from).collect();
        let w = node_pool_weights(&many);
        assert_eq!(w[0], 100);
        assert_eq!(w[11], 100 - 11 * 9);
        assert!(w.windows(2).all(|x| x[0] > x[1]));
        assert!(w.iter().all(|x| (1..=100).contains(x)));
    }

    #[test]
    fn proportional_weights_sum_and_bounds() {
        let w = proportional_weights(&[1.0, 1.0, 1.0], 1000, 1, 999);
        assert_eq!(w.iter().sum::<u32>(), 1000);
        assert_eq!(w, vec![334, 333, 333]);
        let w = proportional_weights(&[3.0, 0.0, 1.0], 1000, 1, 999);
        assert_eq!(w, vec![749, 1, 250]);
        // One pool alone is capped at the ALB maximum.
        assert_eq!(proportional_weights(&[5.0], 1000, 1, 999), vec![999]);
        // What compute asks for: the renderer's total for that many pools,
        // so the weights always add up to it.
        for n in 1..=5 {
            let total = plan_weight_total(n);
            let w = proportional_weights(&vec![1.0; n], total, 1, u32::from(ALB_MAX_WEIGHT));
            assert_eq!(w.iter().sum::<u32>(), total, "{n} pools");
        }
        assert_eq!(plan_weight_total(1), 999);
        assert_eq!(plan_weight_total(2), 1000);
        assert_eq!(
            proportional_weights(&[1.0, 0.0, 0.0, 0.0], 1000, 1, 999),
            vec![997, 1, 1, 1]
        );
    }
}
