//! The weights the Ingress should carry, from what each pool can serve now.
//!
//! Pure: the caller passes the time in, so every rule here is tested without
//! a clock or a cluster.
//!
//! - A pool becomes *constrained* on its first launch-failure signal, at
//!   once: traffic should leave a pool that cannot grow before its queue
//!   does. It stays constrained until the hold-down has passed since its
//!   last signal *and* its ready replicas have caught up with the desired
//!   ones, so a signal that flaps within the hold-down keeps it constrained.
//! - A constrained pool keeps the share of its base weight that its ready
//!   replicas can serve; what it loses goes to the first unconstrained pool
//!   in fallback order (capped at the ALB's 999, the rest to the next one).
//!   The share is of the most replicas the pool wanted during this episode,
//!   not of what it wants now: once traffic leaves, the autoscaler lowers
//!   `desired` to what is ready, and measuring against that would hand the
//!   pool its full weight back, bring the traffic back, and flap.
//! - Small moves (under [`DEADBAND_PERCENT`] of the total weight) are not
//!   written while the constrained set is unchanged: ready counts wobble,
//!   and every write reprograms the load balancer.

use std::time::{Duration, Instant};

use anyaccel_deploy::fleet::ALB_MAX_WEIGHT;

/// Moves smaller than this share of the total weight are not written while
/// the constrained set stays the same.
pub const DEADBAND_PERCENT: u32 = 2;

/// What the controller knows about one pool, in the spec's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolState {
    /// Ready replicas of the pool's Deployment.
    pub ready: u32,
    /// Replicas the Deployment wants (KEDA's HPA sets them).
    pub desired: u32,
    /// When the pool last failed to get a node, if ever.
    pub last_signal: Option<Instant>,
}

/// One recomputation's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The weights the pools should have, in the spec's order.
    pub weights: Vec<u16>,
    /// Which pools are constrained now.
    pub constrained: Vec<bool>,
    /// Whether the weights should be written to the Ingress.
    pub write: bool,
    /// The earliest time a hold-down expires, when something may change
    /// without any new observation.
    pub wake_at: Option<Instant>,
}

/// Keeps the hysteresis state between recomputations.
#[derive(Debug, Clone)]
pub struct Decider {
    base: Vec<u16>,
    hold_down: Duration,
    constrained: Vec<bool>,
    /// The weights in the Ingress now (`None`: unknown or not ours).
    in_place: Option<Vec<u16>>,
    /// The constrained set the weights in place were decided under.
    in_place_constrained: Vec<bool>,
    /// Per pool: the most replicas it wanted since it became constrained
    /// (its current desired while unconstrained).
    wanted: Vec<u32>,
}

impl Decider {
    /// `base`: the spec's weights, in fallback order.
    pub fn new(base: Vec<u16>, hold_down: Duration) -> Self {
        let n = base.len();
        Self {
            base,
            hold_down,
            constrained: vec![false; n],
            in_place: None,
            in_place_constrained: vec![false; n],
            wanted: vec![0; n],
        }
    }

    pub fn base(&self) -> &[u16] {
        &self.base
    }

    /// The weights the Ingress holds now, as last read or written.
    pub fn in_place(&self) -> Option<&[u16]> {
        self.in_place.as_deref()
    }

    /// What a read of the Ingress found (`None`: no annotation, or one that
    /// does not name exactly the spec's services).
    pub fn set_in_place(&mut self, weights: Option<Vec<u16>>) {
        self.in_place = weights.filter(|w| w.len() == self.base.len());
    }

    /// Recomputes the constrained set and the weights at `now`.
    pub fn decide(&mut self, now: Instant, pools: &[PoolState]) -> Decision {
        debug_assert_eq!(pools.len(), self.base.len());
        let mut wake_at: Option<Instant> = None;
        for (i, pool) in pools.iter().enumerate() {
            let expires = pool.last_signal.map(|t| t + self.hold_down);
            let recent = expires.is_some_and(|e| now < e);
            if recent {
                wake_at = earliest(wake_at, expires);
            }
            // Shed at once on a signal; recover only once the hold-down has
            // passed and the pool has the replicas it wants.
            let was = self.constrained[i];
            self.constrained[i] = recent || (was && pool.ready < pool.desired);
            self.wanted[i] = if was && self.constrained[i] {
                self.wanted[i].max(pool.desired)
            } else {
                pool.desired
            };
        }
        let shares: Vec<PoolState> = pools
            .iter()
            .zip(&self.wanted)
            .map(|(p, &wanted)| PoolState {
                desired: wanted,
                ..*p
            })
            .collect();
        let weights = target_weights(&self.base, &shares, &self.constrained);
        let write = match &self.in_place {
            None => true,
            Some(current) if *current == weights => {
                // Nothing to write: these weights now stand for this set.
                self.in_place_constrained.clone_from(&self.constrained);
                false
            }
            Some(current) => {
                self.constrained != self.in_place_constrained
                    || weights == self.base
                    || beyond_deadband(current, &weights)
            }
        };
        Decision {
            weights,
            constrained: self.constrained.clone(),
            write,
            wake_at,
        }
    }

    /// The decision's weights are in the Ingress now.
    pub fn written(&mut self, decision: &Decision) {
        self.in_place = Some(decision.weights.clone());
        self.in_place_constrained.clone_from(&decision.constrained);
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether moving from `current` to `next` is worth a write: the largest
/// single pool's move is at least [`DEADBAND_PERCENT`] of the total weight.
fn beyond_deadband(current: &[u16], next: &[u16]) -> bool {
    let total: u32 = current.iter().map(|&w| u32::from(w)).sum();
    let largest = current
        .iter()
        .zip(next)
        .map(|(&a, &b)| u32::from(a.abs_diff(b)))
        .max()
        .unwrap_or(0);
    largest * 100 >= total * DEADBAND_PERCENT
}

/// The weights for a constrained set: constrained pools keep the share
/// `min(ready, desired) / desired` of their base weight, the rest goes down
/// the fallback order.
pub fn target_weights(base: &[u16], pools: &[PoolState], constrained: &[bool]) -> Vec<u16> {
    let mut weights = base.to_vec();
    let mut remainder: u32 = 0;
    for (i, pool) in pools.iter().enumerate() {
        if !constrained[i] {
            continue;
        }
        let kept = if pool.desired == 0 {
            0
        } else {
            let ready = u64::from(pool.ready.min(pool.desired));
            // <= base, so it fits back in u16.
            (u64::from(base[i]) * ready / u64::from(pool.desired)) as u16
        };
        remainder += u32::from(base[i] - kept);
        weights[i] = kept;
    }
    for (i, weight) in weights.iter_mut().enumerate() {
        if remainder == 0 {
            break;
        }
        if constrained[i] {
            continue;
        }
        let room = u32::from(ALB_MAX_WEIGHT.saturating_sub(*weight));
        let add = room.min(remainder);
        // add <= room <= 999 - weight.
        *weight += add as u16;
        remainder -= add;
    }
    // Routing somewhere beats routing nowhere.
    if weights.iter().all(|&w| w == 0) {
        return base.to_vec();
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: Duration = Duration::from_secs(300);

    fn pool(ready: u32, desired: u32, last_signal: Option<Instant>) -> PoolState {
        PoolState {
            ready,
            desired,
            last_signal,
        }
    }

    /// A decider whose Ingress holds the base weights.
    fn decider(base: &[u16]) -> Decider {
        let mut d = Decider::new(base.to_vec(), HOLD);
        d.set_in_place(Some(base.to_vec()));
        d
    }

    /// Decides and, when it says so, writes.
    fn step(d: &mut Decider, now: Instant, pools: &[PoolState]) -> Decision {
        let decision = d.decide(now, pools);
        if decision.write {
            d.written(&decision);
        }
        decision
    }

    #[test]
    fn no_constraint_keeps_the_base_weights_exactly() {
        let t0 = Instant::now();
        let mut d = decider(&[600, 400]);
        let out = step(&mut d, t0, &[pool(2, 6, None), pool(1, 1, None)]);
        assert_eq!(out.weights, vec![600, 400]);
        assert!(!out.write, "the Ingress already holds the plan");
        assert_eq!(out.constrained, vec![false, false]);
        assert_eq!(out.wake_at, None);
    }

    #[test]
    fn a_constrained_pool_keeps_the_share_its_ready_replicas_serve() {
        let t0 = Instant::now();
        let mut d = decider(&[600, 400]);
        let out = step(&mut d, t0, &[pool(2, 6, Some(t0)), pool(3, 3, None)]);
        assert_eq!(out.constrained, vec![true, false]);
        assert_eq!(out.weights, vec![200, 800]);
        assert!(out.write);
        assert_eq!(out.wake_at, Some(t0 + HOLD));
        assert_eq!(d.in_place(), Some(&[200, 800][..]));
    }

    #[test]
    fn weight_rounds_down_and_ready_above_desired_counts_as_desired() {
        let base = [100, 100];
        let c = [true, false];
        assert_eq!(
            target_weights(&base, &[pool(1, 3, None), pool(0, 0, None)], &c),
            vec![33, 167]
        );
        assert_eq!(
            target_weights(&base, &[pool(9, 3, None), pool(0, 0, None)], &c),
            vec![100, 100]
        );
        assert_eq!(
            target_weights(&base, &[pool(0, 0, None), pool(0, 0, None)], &c),
            vec![0, 200],
            "desired 0 serves nothing"
        );
    }

    #[test]
    fn remainder_goes_down_the_fallback_order_capped_at_999() {
        // Pool 0 loses everything (900); pool 1 is constrained too; pool 2
        // (the first unconstrained) takes up to 999, pool 3 the rest.
        let base = [900, 300, 500, 100];
        let pools = [
            pool(0, 4, None),
            pool(1, 3, None),
            pool(2, 2, None),
            pool(1, 1, None),
        ];
        let w = target_weights(&base, &pools, &[true, true, false, false]);
        // 900 + 200 = 1100 to give; pool 2 takes 499 to reach 999, pool 3 the other 601.
        assert_eq!(w, vec![0, 100, 999, 701]);
        // With pool 2 already at the cap, everything goes to pool 3.
        let w = target_weights(&[500, 999, 10], &pools[..3], &[true, false, false]);
        assert_eq!(w, vec![0, 999, 510]);
    }

    #[test]
    fn order_is_fallback_order_not_size() {
        // The first unconstrained pool in the list gets the share, even when
        // a later one is bigger.
        let w = target_weights(
            &[400, 100, 500],
            &[pool(1, 2, None), pool(1, 1, None), pool(5, 5, None)],
            &[true, false, false],
        );
        assert_eq!(w, vec![200, 300, 500]);
    }

    #[test]
    fn all_constrained_keeps_the_computed_weights_or_the_base_if_all_zero() {
        let base = [600, 400];
        let all = [true, true];
        assert_eq!(
            target_weights(&base, &[pool(3, 6, None), pool(1, 4, None)], &all),
            vec![300, 100]
        );
        assert_eq!(
            target_weights(&base, &[pool(0, 6, None), pool(0, 4, None)], &all),
            vec![600, 400],
            "routing somewhere beats nowhere"
        );
    }

    #[test]
    fn recovery_needs_both_the_hold_down_and_the_replicas() {
        let t0 = Instant::now();
        let mut d = decider(&[600, 400]);
        let shed = step(&mut d, t0, &[pool(2, 6, Some(t0)), pool(3, 3, None)]);
        assert_eq!(shed.weights, vec![200, 800]);

        // Replicas caught up, but the hold-down has not passed.
        let t1 = t0 + HOLD - Duration::from_secs(1);
        let out = step(&mut d, t1, &[pool(6, 6, Some(t0)), pool(3, 3, None)]);
        assert_eq!(out.constrained, vec![true, false]);
        // Ready caught up, so the constrained pool's share is whole again,
        // even though it is still constrained.
        assert_eq!(out.weights, vec![600, 400]);
        assert!(out.write, "back to the plan always writes");

        // Hold-down passed but replicas still short: still constrained.
        let mut d = decider(&[600, 400]);
        step(&mut d, t0, &[pool(2, 6, Some(t0)), pool(3, 3, None)]);
        let t2 = t0 + HOLD + Duration::from_secs(1);
        let out = step(&mut d, t2, &[pool(4, 6, Some(t0)), pool(3, 3, None)]);
        assert_eq!(out.constrained, vec![true, false]);
        assert_eq!(out.weights, vec![400, 600]);

        // Both: unconstrained, the plan exactly.
        let out = step(&mut d, t2, &[pool(6, 6, Some(t0)), pool(3, 3, None)]);
        assert_eq!(out.constrained, vec![false, false]);
        assert_eq!(out.weights, vec![600, 400]);
        assert!(out.write);
        assert_eq!(out.wake_at, None);
    }

    #[test]
    fn a_flapping_signal_does_not_flap_the_weights() {
        let t0 = Instant::now();
        let mut d = decider(&[600, 400]);
        let mut writes = Vec::new();
        // A failure every 120 s (within the 300 s hold-down), seen on every
        // other step only, while ready stays at 2 and the autoscaler, seeing
        // the traffic leave, lowers desired from 6 to 2.
        for k in 0..12u64 {
            let now = t0 + Duration::from_secs(k * 60);
            let last = t0 + Duration::from_secs((k / 2) * 120);
            let desired = if k < 3 { 6 } else { 2 };
            let out = step(
                &mut d,
                now,
                &[pool(2, desired, Some(last)), pool(3, 3, None)],
            );
            assert_eq!(out.constrained, vec![true, false], "step {k}");
            assert_eq!(out.weights, vec![200, 800], "step {k}");
            if out.write {
                writes.push(out.weights);
            }
        }
        assert_eq!(
            writes,
            vec![vec![200, 800]],
            "one shed, no flapping back to the plan"
        );
        // The signals stop: the hold-down passes with ready == desired, and
        // only then the plan comes back.
        let now = t0 + Duration::from_secs(10 * 60 + 300);
        let out = step(
            &mut d,
            now,
            &[
                pool(2, 2, Some(t0 + Duration::from_secs(600))),
                pool(3, 3, None),
            ],
        );
        assert_eq!(out.constrained, vec![false, false]);
        assert_eq!(out.weights, vec![600, 400]);
        assert!(out.write);
    }

    #[test]
    fn ready_growing_during_the_episode_wins_weight_back() {
        let t0 = Instant::now();
        let mut d = decider(&[600, 400]);
        step(&mut d, t0, &[pool(2, 6, Some(t0)), pool(3, 3, None)]);
        let t1 = t0 + Duration::from_secs(10);
        let out = step(&mut d, t1, &[pool(4, 6, Some(t0)), pool(3, 3, None)]);
        assert_eq!(out.weights, vec![400, 600]);
        assert!(out.write);
        // Ready bouncing back down follows, too (it is real lost capacity).
        let out = step(&mut d, t1, &[pool(3, 6, Some(t0)), pool(3, 3, None)]);
        assert_eq!(out.weights, vec![300, 700]);
        assert!(out.write);
    }

    #[test]
    fn a_signal_on_a_recovered_pool_sheds_again_at_once() {
        let t0 = Instant::now();
        let mut d = decider(&[600, 400]);
        step(&mut d, t0, &[pool(2, 6, Some(t0)), pool(3, 3, None)]);
        let t1 = t0 + HOLD;
        let out = step(&mut d, t1, &[pool(6, 6, Some(t0)), pool(3, 3, None)]);
        assert_eq!(out.weights, vec![600, 400]);
        // HPA asks for more, Karpenter fails again.
        let t2 = t1 + Duration::from_secs(5);
        let out = step(&mut d, t2, &[pool(6, 9, Some(t2)), pool(3, 3, None)]);
        assert_eq!(out.constrained, vec![true, false]);
        assert_eq!(out.weights, vec![400, 600]);
        assert!(out.write);
    }

    #[test]
    fn deadband_skips_small_moves_but_not_set_changes() {
        let t0 = Instant::now();
        let mut d = decider(&[500, 500]);
        // 49/50 ready: 490/510, a 10-weight move of a 1000 total (1%), but
        // the constrained set changed: written.
        let out = step(&mut d, t0, &[pool(49, 50, Some(t0)), pool(5, 5, None)]);
        assert_eq!(out.weights, vec![490, 510]);
        assert!(out.write);
        // 48/50: 480/520 differs by 10 (1%) from what is in place: skipped.
        let out = step(&mut d, t0, &[pool(48, 50, Some(t0)), pool(5, 5, None)]);
        assert_eq!(out.weights, vec![480, 520]);
        assert!(!out.write);
        assert_eq!(d.in_place(), Some(&[490, 510][..]));
        // 47/50: 470/530 differs by 20 (2%): written.
        let out = step(&mut d, t0, &[pool(47, 50, Some(t0)), pool(5, 5, None)]);
        assert!(out.write);
        assert_eq!(d.in_place(), Some(&[470, 530][..]));
        // A second pool becomes constrained with a tiny move: written.
        let out = step(&mut d, t0, &[pool(47, 50, Some(t0)), pool(5, 5, Some(t0))]);
        assert_eq!(out.constrained, vec![true, true]);
        assert_eq!(out.weights, vec![470, 500]);
        assert!(out.write);
    }

    #[test]
    fn deadband_never_blocks_the_return_to_the_plan() {
        let t0 = Instant::now();
        let mut d = decider(&[500, 500]);
        step(&mut d, t0, &[pool(49, 50, Some(t0)), pool(5, 5, None)]);
        assert_eq!(d.in_place(), Some(&[490, 510][..]));
        // Still constrained (hold-down), but ready caught up: the exact plan
        // is a 1% move and is written anyway.
        let out = step(
            &mut d,
            t0 + Duration::from_secs(1),
            &[pool(50, 50, Some(t0)), pool(5, 5, None)],
        );
        assert_eq!(out.weights, vec![500, 500]);
        assert!(out.write);
    }

    #[test]
    fn unknown_ingress_weights_are_always_written() {
        let t0 = Instant::now();
        let mut d = Decider::new(vec![600, 400], HOLD);
        let out = d.decide(t0, &[pool(1, 1, None), pool(1, 1, None)]);
        assert!(out.write);
        // A mismatched read (wrong number of services) counts as unknown.
        d.set_in_place(Some(vec![1]));
        assert_eq!(d.in_place(), None);
    }

    #[test]
    fn a_signal_older_than_the_hold_down_does_not_constrain() {
        let t0 = Instant::now();
        let mut d = decider(&[600, 400]);
        let now = t0 + HOLD;
        let out = step(&mut d, now, &[pool(2, 6, Some(t0)), pool(3, 3, None)]);
        assert_eq!(out.constrained, vec![false, false]);
        assert_eq!(out.weights, vec![600, 400]);
    }
}
