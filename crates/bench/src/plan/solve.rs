//! The cheapest whole-replica mix of pools for a demand.

/// One pool as the mix search sees it.
#[derive(Debug, Clone, Copy)]
pub struct MixPool {
    /// Cost per replica-hour.
    pub price: f64,
    /// Images per second per replica at the KEDA target.
    pub capacity: f64,
    /// Replicas available at most.
    pub cap: Option<u32>,
}

/// The cheapest whole number of replicas per pool whose capacity covers
/// `demand`: branch and bound, pools in order of cost per image, bounded by
/// the fractional relaxation. `None` when the caps make it impossible.
/// Returns replicas per pool (in input order), cost per hour, and whether the
/// search finished (rather than hitting its node limit).
pub fn cheapest_mix(pools: &[MixPool], demand: f64) -> Option<(Vec<u32>, f64, bool)> {
    const EPS: f64 = 1e-9;
    const NODE_LIMIT: u64 = 2_000_000;
    let mut order: Vec<usize> = (0..pools.len())
        .filter(|&i| pools[i].capacity > 0.0 && pools[i].cap != Some(0))
        .collect();
    order.sort_by(|&a, &b| {
        (pools[a].price / pools[a].capacity).total_cmp(&(pools[b].price / pools[b].capacity))
    });
    if demand <= EPS {
        return Some((vec![0; pools.len()], 0.0, true));
    }
    // Suffix minima of cost per capacity and suffix capacity sums.
    let n = order.len();
    let mut best_eff = vec![f64::INFINITY; n + 1];
    let mut reach = vec![0.0f64; n + 1];
    for k in (0..n).rev() {
        let p = &pools[order[k]];
        best_eff[k] = best_eff[k + 1].min(p.price / p.capacity);
        reach[k] = reach[k + 1] + p.cap.map_or(f64::INFINITY, |c| f64::from(c) * p.capacity);
    }
    if reach[0] + EPS < demand {
        return None;
    }

    struct Search<'a> {
        pools: &'a [MixPool],
        order: &'a [usize],
        best_eff: &'a [f64],
        reach: &'a [f64],
        cur: Vec<u32>,
        best: Option<(Vec<u32>, f64)>,
        nodes: u64,
    }
    impl Search<'_> {
        fn go(&mut self, k: usize, remaining: f64, cost: f64) {
            self.nodes += 1;
            if self.nodes > NODE_LIMIT {
                return;
            }
            if remaining <= EPS {
                if self.best.as_ref().is_none_or(|(_, c)| cost < *c - 1e-12) {
                    self.best = Some((self.cur.clone(), cost));
                }
                return;
            }
            if k == self.order.len() || self.reach[k] + EPS < remaining {
                return;
            }
            let bound = cost + remaining * self.best_eff[k];
            if let Some((_, c)) = &self.best
                && bound >= *c - 1e-12
            {
                return;
            }
            let i = self.order[k];
            let p = self.pools[i];
            let need = ((remaining - EPS) / p.capacity).ceil().max(0.0) as u32;
            let top = p.cap.map_or(need, |c| c.min(need));
            for r in (0..=top).rev() {
                self.cur[i] = r;
                self.go(
                    k + 1,
                    remaining - f64::from(r) * p.capacity,
                    cost + f64::from(r) * p.price,
                );
                if self.nodes > NODE_LIMIT {
                    break;
                }
            }
            self.cur[i] = 0;
        }
    }
    let mut s = Search {
        pools,
        order: &order,
        best_eff: &best_eff,
        reach: &reach,
        cur: vec![0; pools.len()],
        best: None,
        nodes: 0,
    };
    s.go(0, demand, 0.0);
    let finished = s.nodes <= NODE_LIMIT;
    s.best.map(|(r, c)| (r, c, finished))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp(price: f64, capacity: f64, cap: Option<u32>) -> MixPool {
        MixPool {
            price,
            capacity,
            cap,
        }
    }

    #[test]
    fn cheapest_mix_rounds_up_with_the_cheapest_filler() {
        // A: 1 $/h for 1 img/s; B: 0.6 $/h for 0.5 img/s (worse per image,
        // cheaper per replica). 2.5 img/s: 2 A + 1 B = 2.6 beats 3 A = 3.
        let pools = [mp(1.0, 1.0, None), mp(0.6, 0.5, None)];
        let (r, c, proven) = cheapest_mix(&pools, 2.5).unwrap();
        assert_eq!(r, vec![2, 1]);
        assert!((c - 2.6).abs() < 1e-9);
        assert!(proven);
        // Whole numbers: exactly 3 img/s is 3 A.
        let (r, _, _) = cheapest_mix(&pools, 3.0).unwrap();
        assert_eq!(r, vec![3, 0]);
    }

    #[test]
    fn cheapest_mix_respects_caps_and_says_when_impossible() {
        let pools = [mp(1.0, 1.0, Some(2)), mp(3.0, 1.0, Some(10))];
        let (r, c, _) = cheapest_mix(&pools, 5.0).unwrap();
        assert_eq!(r, vec![2, 3]);
        assert!((c - 11.0).abs() < 1e-9);
        assert!(cheapest_mix(&[mp(1.0, 1.0, Some(2))], 5.0).is_none());
        let (r, c, _) = cheapest_mix(&pools, 0.0).unwrap();
        assert_eq!(r, vec![0, 0]);
        assert_eq!(c, 0.0);
    }

    #[test]
    fn cheapest_mix_matches_brute_force() {
        let pools = [
            mp(0.7582, 1.4, None),
            mp(1.3438, 1.7333, None),
            mp(1.006, 1.2, None),
            mp(0.8048, 0.8133, None),
        ];
        for d in [0.3, 1.0, 2.9, 4.4, 7.0, 9.99] {
            let (_, c, _) = cheapest_mix(&pools, d).unwrap();
            let mut best = f64::INFINITY;
            for a in 0..10u32 {
                for b in 0..10u32 {
                    for e in 0..10u32 {
                        for f in 0..14u32 {
                            let cap = f64::from(a) * 1.4
                                + f64::from(b) * 1.7333
                                + f64::from(e) * 1.2
                                + f64::from(f) * 0.8133;
                            if cap + 1e-9 >= d {
                                let cost = f64::from(a) * 0.7582
                                    + f64::from(b) * 1.3438
                                    + f64::from(e) * 1.006
                                    + f64::from(f) * 0.8048;
                                best = best.min(cost);
                            }
                        }
                    }
                }
            }
            assert!((c - best).abs() < 1e-9, "demand {d}: {c} vs {best}");
        }
    }
}
