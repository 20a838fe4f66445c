//! Load generation on plain threads: closed loop (N clients back to back)
//! and open loop (requests sent at scheduled times, whether or not earlier
//! ones were answered).

use crate::client::{Client, Outcome, Status};
use crate::mix::Mix;
use crate::rng::SplitMix64;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What every level shares.
pub struct Ctx<'a> {
    pub client: &'a Client,
    pub mix: &'a Mix,
    pub seed: u64,
    /// Closed loop: sleep for a 429/503's `Retry-After` (capped) before the
    /// client's next request, as a well-behaved client would.
    pub honor_retry_after: bool,
    pub max_retry_wait: Duration,
    /// Open loop: requests in flight at most; arrivals beyond are recorded
    /// as `client_overflow` instead of sent.
    pub max_in_flight: usize,
    /// Requests left for the whole run.
    pub remaining: &'a AtomicI64,
    /// The whole run's deadline.
    pub run_deadline: Instant,
    /// Answered requests, for the progress display.
    pub completed: &'a AtomicU64,
    /// Of those, failed (including ones the client could not send).
    pub failed: &'a AtomicU64,
}

/// What a level produced.
pub struct LevelRun {
    pub outcomes: Vec<Outcome>,
    /// Seconds after the level's start at which it stopped issuing requests.
    pub window_s: f64,
    /// Set when a run-wide cap cut the level short.
    pub stopped_early: Option<String>,
}

impl Ctx<'_> {
    fn count(&self, o: &Outcome) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        if !o.status.is_success() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn take_ticket(&self) -> bool {
        self.remaining.fetch_sub(1, Ordering::SeqCst) > 0
    }

    fn request_seed(&self, level: usize, stream: u64, k: u64) -> SplitMix64 {
        let mut s = SplitMix64::new(self.seed ^ ((level as u64) << 48) ^ (stream << 24) ^ k);
        // Decorrelate neighbouring seeds.
        s.next_u64();
        s
    }

    fn cap_reason(&self, refused: bool, level_deadline: Instant) -> Option<String> {
        if refused {
            Some("the run's request cap (--max-requests) was reached".into())
        } else if self.run_deadline < level_deadline && Instant::now() >= self.run_deadline {
            Some("the run's time cap (--max-duration) was reached".into())
        } else {
            None
        }
    }
}

/// `secs` seconds as a `Duration`, saturating (negative or NaN is zero,
/// too large is about a century), so no input can make it panic.
pub fn dur(secs: f64) -> Duration {
    const CENTURY: f64 = 100.0 * 365.0 * 86_400.0;
    if secs.is_nan() || secs <= 0.0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(secs.min(CENTURY))
    }
}

/// `t + secs`, saturating instead of overflowing.
pub fn after(t: Instant, secs: f64) -> Instant {
    let d = dur(secs);
    t.checked_add(d)
        .or_else(|| t.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(t)
}

fn push(results: &Mutex<Vec<Outcome>>, o: Outcome) {
    let mut g = results.lock().unwrap_or_else(|e| e.into_inner());
    g.push(o);
}

/// Sleeps until `deadline` or `until`, whichever is first.
fn sleep_until(until: Instant) {
    let now = Instant::now();
    if until > now {
        std::thread::sleep(until - now);
    }
}

/// `concurrency` clients for `duration` seconds.
pub fn run_closed(ctx: &Ctx<'_>, level: usize, concurrency: usize, duration: f64) -> LevelRun {
    let clock = Instant::now();
    let deadline = after(clock, duration).min(ctx.run_deadline);
    let results = Mutex::new(Vec::new());
    let stopped_at = Mutex::new(None::<f64>);
    std::thread::scope(|s| {
        for w in 0..concurrency {
            let results = &results;
            let stopped_at = &stopped_at;
            let spawned = std::thread::Builder::new()
                .name(format!("bench-c{w}"))
                .spawn_scoped(s, move || {
                    let mut k = 0u64;
                    loop {
                        if Instant::now() >= deadline {
                            break;
                        }
                        if !ctx.take_ticket() {
                            let mut g = stopped_at.lock().unwrap_or_else(|e| e.into_inner());
                            g.get_or_insert(clock.elapsed().as_secs_f64());
                            break;
                        }
                        let mut rng = ctx.request_seed(level, w as u64, k);
                        k += 1;
                        let idx = ctx.mix.pick(&mut rng);
                        let entry = &ctx.mix.requests[idx];
                        let body = entry.body(rng.next_u64() >> 1);
                        let intended = clock.elapsed().as_secs_f64();
                        let o = ctx.client.generate(&body, entry.n, idx, intended, clock);
                        let wait = match (&o.status, o.retry_after) {
                            (Status::Http(429 | 503), Some(r)) if ctx.honor_retry_after => {
                                Some(dur(r).min(ctx.max_retry_wait))
                            }
                            // A dead server must not be hammered in a tight loop.
                            (Status::Transport, _) => Some(Duration::from_millis(100)),
                            _ => None,
                        };
                        ctx.count(&o);
                        push(results, o);
                        if let Some(w) = wait {
                            sleep_until(
                                Instant::now()
                                    .checked_add(w)
                                    .unwrap_or(deadline)
                                    .min(deadline),
                            );
                        }
                    }
                });
            if spawned.is_err() {
                // Fewer clients than asked: recorded, not fatal.
                push(
                    results,
                    Outcome {
                        intended: 0.0,
                        sent: 0.0,
                        done: 0.0,
                        status: Status::ClientOverflow,
                        requested_images: 0,
                        images: 0,
                        queue_time: None,
                        inference_time: None,
                        total_time: None,
                        retry_after: None,
                        error_code: None,
                        mix_index: 0,
                    },
                );
            }
        }
    });
    let stopped = stopped_at.into_inner().unwrap_or_else(|e| e.into_inner());
    let window_s = stopped.unwrap_or_else(|| {
        deadline
            .saturating_duration_since(clock)
            .as_secs_f64()
            .min(duration)
    });
    LevelRun {
        outcomes: results.into_inner().unwrap_or_else(|e| e.into_inner()),
        window_s,
        stopped_early: ctx.cap_reason(stopped.is_some(), after(clock, duration)),
    }
}

/// Sends one request at each offset of `schedule` (seconds), each on its own
/// thread, for at most `duration` seconds.
pub fn run_open(ctx: &Ctx<'_>, level: usize, schedule: &[f64], duration: f64) -> LevelRun {
    let clock = Instant::now();
    let deadline = after(clock, duration).min(ctx.run_deadline);
    let results = Mutex::new(Vec::new());
    let in_flight = AtomicUsize::new(0);
    let stopped = AtomicBool::new(false);
    let mut window_s = duration;
    std::thread::scope(|s| {
        for (i, &t) in schedule.iter().enumerate() {
            if t >= duration {
                break;
            }
            let due = after(clock, t);
            if due >= deadline {
                window_s = deadline.saturating_duration_since(clock).as_secs_f64();
                break;
            }
            sleep_until(due);
            if !ctx.take_ticket() {
                stopped.store(true, Ordering::SeqCst);
                window_s = t;
                break;
            }
            let mut rng = ctx.request_seed(level, 0, i as u64);
            let idx = ctx.mix.pick(&mut rng);
            let entry = &ctx.mix.requests[idx];
            let body = entry.body(rng.next_u64() >> 1);
            let overflow = |results: &Mutex<Vec<Outcome>>| {
                let now = clock.elapsed().as_secs_f64();
                let o = Outcome {
                    intended: t,
                    sent: now,
                    done: now,
                    status: Status::ClientOverflow,
                    requested_images: entry.n,
                    images: 0,
                    queue_time: None,
                    inference_time: None,
                    total_time: None,
                    retry_after: None,
                    error_code: None,
                    mix_index: idx,
                };
                ctx.count(&o);
                push(results, o);
            };
            if in_flight.load(Ordering::SeqCst) >= ctx.max_in_flight {
                overflow(&results);
                continue;
            }
            in_flight.fetch_add(1, Ordering::SeqCst);
            let results_ref = &results;
            let in_flight_ref = &in_flight;
            let spawned = std::thread::Builder::new()
                .name(format!("bench-o{i}"))
                .spawn_scoped(s, move || {
                    let o = ctx.client.generate(&body, entry.n, idx, t, clock);
                    ctx.count(&o);
                    push(results_ref, o);
                    in_flight_ref.fetch_sub(1, Ordering::SeqCst);
                });
            if spawned.is_err() {
                in_flight.fetch_sub(1, Ordering::SeqCst);
                overflow(&results);
            }
        }
    });
    let mut outcomes = results.into_inner().unwrap_or_else(|e| e.into_inner());
    outcomes.sort_by(|a, b| a.intended.total_cmp(&b.intended));
    LevelRun {
        outcomes,
        window_s,
        stopped_early: ctx.cap_reason(stopped.load(Ordering::SeqCst), after(clock, duration)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_saturate_instead_of_panicking() {
        assert_eq!(dur(-1.0), Duration::ZERO);
        assert_eq!(dur(f64::NAN), Duration::ZERO);
        assert_eq!(dur(1.5), Duration::from_millis(1500));
        assert!(dur(f64::INFINITY) >= Duration::from_secs(86_400 * 365));
        assert!(dur(1e300) >= Duration::from_secs(86_400 * 365));
        let t = Instant::now();
        assert!(after(t, 1e300) > t);
        assert_eq!(after(t, -5.0), t);
    }
}
