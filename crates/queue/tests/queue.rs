//! The queue's protocol against a real `redis-server` on loopback: durable
//! accept, pull and claim, and the owner fence that gives every job exactly
//! one end.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyaccel_queue::{
    Accepted, Beat, Cancel, Lookup, NewJob, QueueConfig, RecordStatus, RedisQueue, Terminal,
};

struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis() -> Redis {
    redis_with(&[])
}

fn redis_with(extra: &[&str]) -> Redis {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is missing: run scripts/setup-test-env.sh");
    // Owned before waiting, so a redis that never listens is still reaped.
    let r = Redis(child, port);
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return r;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("redis never listened on {port}");
}

fn queue(r: &Redis, consumer: &str) -> RedisQueue {
    queue_with(r, consumer, None)
}

fn queue_with(r: &Redis, consumer: &str, password: Option<&str>) -> RedisQueue {
    RedisQueue::new(
        QueueConfig {
            url: format!("redis://127.0.0.1:{}", r.1),
            password: password.map(str::to_string),
            queue: "test".into(),
            consumer: consumer.into(),
            visibility_timeout: Duration::from_millis(300),
            result_ttl: Duration::from_secs(60),
        },
        None,
    )
    .expect("configured")
}

fn job(id: &str, key: Option<&str>) -> NewJob {
    NewJob {
        id: id.into(),
        spec: format!("{{\"job\":\"{id}\"}}"),
        provenance: "{}".into(),
        total_steps: 10,
        created_unix: 1,
        request_id: None,
        queued_event: "{\"event\":\"queued\"}".into(),
        idempotency_key: key.map(str::to_string),
    }
}

fn end(status: RecordStatus) -> Terminal {
    Terminal {
        status,
        error: None,
        result: Some(b"images".to_vec()),
        provenance: String::new(),
        event: "{\"event\":\"completed\"}".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_pulled_claimed_from_the_dead_and_end_exactly_once() {
    let r = redis();
    let (a, b) = (queue(&r, "a"), queue(&r, "b"));
    a.ping().await.expect("redis answers");
    assert!(a.health().connected);

    assert!(matches!(
        a.accept(&job("j1", Some("k"))).await,
        Ok(Accepted::New { .. })
    ));
    assert_eq!(
        b.accept(&job("j2", Some("k"))).await.expect("accept"),
        Accepted::Existing { id: "j1".into() },
        "an idempotency key names the job it first created"
    );
    a.accept(&job("j3", None)).await.expect("accept");
    assert_eq!(a.waiting().await.expect("waiting"), 2);

    // A reads j1 and takes it; j3 is left for B.
    let got = a
        .read_new(1, Duration::from_millis(100))
        .await
        .expect("read");
    assert_eq!(
        got.iter().map(|(_, id)| id.as_str()).collect::<Vec<_>>(),
        ["j1"]
    );
    let (entry, _) = &got[0];
    let taken = a.take("j1", entry).await.expect("take").expect("runnable");
    assert_eq!(taken.claimed_from, None);
    assert!(
        a.progress("j1", RecordStatus::Running, 3, None, "{}")
            .await
            .expect("progress")
    );
    assert!(a.checkpoint("j1", 3, b"state").await.expect("checkpoint"));
    assert_eq!(
        a.heartbeat(&[("j1".into(), entry.clone())])
            .await
            .expect("beat"),
        [Beat::Held { cancel: false }]
    );
    assert_eq!(b.position(entry).await.expect("position"), 0);

    // A stalls past the visibility timeout: B claims j1 with A's checkpoint.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let claimed = b.claim_idle(5).await.expect("claim");
    assert_eq!(
        claimed
            .iter()
            .map(|(_, id)| id.as_str())
            .collect::<Vec<_>>(),
        ["j1"]
    );
    let again = b.take("j1", entry).await.expect("take").expect("runnable");
    assert_eq!(again.claimed_from.as_deref(), Some("a"));
    assert_eq!(again.checkpoint.as_deref(), Some(&b"state"[..]));

    // A comes back: every write about j1 is refused, and it learns it lost the job.
    assert_eq!(
        a.heartbeat(&[("j1".into(), entry.clone())])
            .await
            .expect("beat"),
        [Beat::Lost]
    );
    assert!(
        !a.progress("j1", RecordStatus::Running, 4, None, "{}")
            .await
            .expect("fenced")
    );
    assert!(
        !a.finish("j1", entry, &end(RecordStatus::Completed))
            .await
            .expect("fenced")
    );
    assert!(
        b.finish("j1", entry, &end(RecordStatus::Completed))
            .await
            .expect("finish")
    );
    assert!(
        !b.finish("j1", entry, &end(RecordStatus::Failed))
            .await
            .expect("once")
    );
    let Lookup::Found(rec) = a.get("j1").await.expect("get") else {
        panic!("j1 is kept")
    };
    assert_eq!(rec.status, RecordStatus::Completed);
    assert_eq!(rec.result.as_deref(), Some(&b"images"[..]));
    assert_eq!((rec.step, rec.claims, rec.owner), (10, 1, None));

    // A hand-back re-queues at the end with the checkpoint; the old entry is dropped.
    let got = b
        .read_new(1, Duration::from_millis(100))
        .await
        .expect("read");
    let (e3, _) = got[0].clone();
    b.take("j3", &e3).await.expect("take").expect("runnable");
    let e3b = b
        .hand_back("j3", &e3, Some((5, b"half")), "{}")
        .await
        .expect("hand back")
        .expect("owned");
    assert!(
        a.take("j3", &e3).await.expect("take").is_none(),
        "the old entry is stale"
    );
    let got = a
        .read_new(1, Duration::from_millis(100))
        .await
        .expect("read");
    assert_eq!(got, [(e3b.clone(), "j3".to_string())]);
    let t = a.take("j3", &e3b).await.expect("take").expect("runnable");
    assert_eq!(t.checkpoint.as_deref(), Some(&b"half"[..]));
    assert_eq!(t.claimed_from, None, "a hand-back is not a death");

    // Cancel: a running job is asked to stop; a queued one ends at once.
    assert_eq!(
        b.cancel("j3", "{}").await.expect("cancel"),
        Cancel::Requested
    );
    assert_eq!(
        a.heartbeat(&[("j3".into(), e3b)]).await.expect("beat"),
        [Beat::Held { cancel: true }]
    );
    a.accept(&job("j4", None)).await.expect("accept");
    assert_eq!(
        b.cancel("j4", "{}").await.expect("cancel"),
        Cancel::Cancelled
    );
    assert_eq!(
        b.cancel("j4", "{}").await.expect("cancel"),
        Cancel::Finished
    );
    assert_eq!(
        b.cancel("never", "{}").await.expect("cancel"),
        Cancel::NotFound
    );
    assert!(matches!(a.get("never").await, Ok(Lookup::NotFound)));
    let events = a.last_event("j4").await.expect("events").expect("one");
    assert_eq!(events.data, "{}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_is_an_unavailable_error_and_shows_in_health() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let q = RedisQueue::new(
        QueueConfig {
            url: format!("redis://127.0.0.1:{port}"),
            password: None,
            queue: "down".into(),
            consumer: "a".into(),
            visibility_timeout: Duration::from_secs(1),
            result_ttl: Duration::from_secs(1),
        },
        None,
    )
    .expect("configured");
    let err = q
        .accept(&job("x", None))
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(err, anyaccel_queue::QueueError::Unavailable(_)),
        "{err}"
    );
    let h = q.health();
    assert!(!h.connected && h.error.is_some(), "{h:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_setting_authenticates_and_its_absence_is_refused() {
    let r = redis_with(&["--requirepass", "s3cret"]);
    let ok = queue_with(&r, "a", Some("s3cret"));
    ok.ping().await.expect("authenticated");
    ok.accept(&job("p1", None)).await.expect("accepted");
    let anonymous = queue_with(&r, "b", None);
    let err = anonymous.get("p1").await.expect_err("NOAUTH");
    assert!(
        matches!(err, anyaccel_queue::QueueError::Unavailable(_)),
        "{err}"
    );
    assert!(!anonymous.health().connected);
    let wrong = queue_with(&r, "c", Some("guess"));
    let err = wrong.ping().await.expect_err("WRONGPASS");
    assert!(
        matches!(err, anyaccel_queue::QueueError::Unavailable(_)),
        "{err}"
    );
}
