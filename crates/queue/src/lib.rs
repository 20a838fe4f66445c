//! The fleet's shared job queue on Redis: any replica answers for any job,
//! and a job outlives the replica that ran it.
//!
//! - A job is a hash (`…:job:<id>`: its spec, status, progress, owner,
//!   latest checkpoint, result) plus an event stream (`…:job:<id>:events`)
//!   that any replica's SSE handler reads.
//! - The queue is one stream (`…:jobs`) with one consumer group
//!   (`replicas`): a replica reads entries when it has room, so faster
//!   pools take more work; an entry stays pending on its reader until the
//!   job ends or is handed back.
//! - A running replica heartbeats its entries (`XCLAIM … JUSTID` resets
//!   their idle time). Entries idle past the visibility timeout belong to a
//!   replica that died; another one `XAUTOCLAIM`s them and resumes the job
//!   from its checkpoint.
//! - Every write about a running job is fenced on its `owner` field (Lua), so
//!   a replica that lost a job (it was claimed while the replica stalled)
//!   can no longer change it: each job ends with exactly one terminal status.
//!
//! This crate speaks Redis; what a spec, a result or an event contains is
//! the server's business (opaque strings and bytes here).

mod keys;
mod scripts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, Value};

pub use keys::Keys;

/// Where the queue lives and how replicas share it.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// `redis://host:port[/db]` or `rediss://…` for TLS; may hold a password.
    pub url: String,
    /// Overrides the URL's password (kept out of the URL, e.g. from a Secret).
    pub password: Option<String>,
    /// Replicas with the same queue name share jobs: one per model artifact.
    pub queue: String,
    /// This replica's consumer name in the group (unique per process).
    pub consumer: String,
    /// An entry not heartbeaten for this long belongs to a dead replica.
    pub visibility_timeout: Duration,
    /// How long finished jobs, their results and `url` images stay.
    pub result_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis could not be reached or did not answer in time; retry later.
    #[error("redis is unavailable: {0}")]
    Unavailable(String),
    /// Redis answered something this crate did not expect.
    #[error("unexpected answer from redis: {0}")]
    Protocol(String),
    #[error("invalid redis configuration: {0}")]
    Config(String),
}

impl From<redis::RedisError> for QueueError {
    fn from(e: redis::RedisError) -> Self {
        // A wrong or missing password is the deployment's fault, not the
        // request's: it reads as Redis being unavailable (503, readiness degraded).
        let auth = e.kind() == redis::ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
            // A pipeline's error wraps its commands' own.
            || ["NOAUTH", "WRONGPASS"].iter().any(|c| e.to_string().contains(c));
        if auth
            || e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
        {
            QueueError::Unavailable(e.to_string())
        } else {
            QueueError::Protocol(e.to_string())
        }
    }
}

/// Receives one observation per Redis call (the server's metrics implement it).
pub trait QueueTelemetry: Send + Sync {
    fn redis_call(&self, _op: &'static str, _elapsed: Duration, _ok: bool) {}
}

struct NoTelemetry;
impl QueueTelemetry for NoTelemetry {}

/// Where a job stands, as the hash records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl RecordStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordStatus::Queued => "queued",
            RecordStatus::Running => "running",
            RecordStatus::Completed => "completed",
            RecordStatus::Failed => "failed",
            RecordStatus::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => RecordStatus::Queued,
            "running" => RecordStatus::Running,
            "completed" => RecordStatus::Completed,
            "failed" => RecordStatus::Failed,
            "cancelled" => RecordStatus::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RecordStatus::Completed | RecordStatus::Failed | RecordStatus::Cancelled
        )
    }
}

/// A job to put on the queue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    /// What to run (the server's JSON).
    pub spec: String,
    /// Shown while no replica has picked it up (the server's JSON).
    pub provenance: String,
    pub total_steps: u32,
    pub created_unix: u64,
    pub request_id: Option<String>,
    /// The first event of its stream (the server's JSON).
    pub queued_event: String,
    pub idempotency_key: Option<String>,
}

/// What `accept` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Stored, durably, under this stream entry.
    New { entry: String },
    /// The idempotency key was seen: this job was accepted before.
    Existing { id: String },
}

/// A job as any replica reads it.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub status: RecordStatus,
    pub spec: String,
    pub provenance: String,
    pub step: u32,
    pub total_steps: u32,
    pub created_unix: u64,
    pub request_id: Option<String>,
    /// The server's JSON for a failed job's error.
    pub error: Option<String>,
    /// The server's encoding of a completed job's result.
    pub result: Option<Vec<u8>>,
    /// The stream entry that queues it (while queued).
    pub entry: String,
    /// The replica running it, if one does.
    pub owner: Option<String>,
    /// Times it was taken over from a replica that died.
    pub claims: u32,
}

/// Looking a job up.
#[derive(Debug)]
pub enum Lookup<T> {
    Found(T),
    /// It existed but its result expired.
    Gone,
    NotFound,
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    NotFound,
    /// Queued: cancelled at once.
    Cancelled,
    /// Running: its replica stops it at the next step.
    Requested,
    /// It had already ended.
    Finished,
}

/// A job this replica took from the queue.
#[derive(Debug, Clone)]
pub struct Taken {
    pub id: String,
    pub entry: String,
    pub spec: String,
    pub checkpoint: Option<Vec<u8>>,
    /// The replica it was claimed from (it stopped heartbeating), if any.
    pub claimed_from: Option<String>,
}

/// How a job this replica owns ended.
#[derive(Debug, Clone)]
pub struct Terminal {
    pub status: RecordStatus,
    pub error: Option<String>,
    pub result: Option<Vec<u8>>,
    /// Who ran it and how ('' keeps what was recorded).
    pub provenance: String,
    pub event: String,
}

/// Whether a job this replica runs is still its own, and what was asked of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    Held {
        cancel: bool,
    },
    /// Another replica claimed it; stop writing about it.
    Lost,
}

/// An event of a job's stream.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    pub id: String,
    pub data: String,
}

/// Whether Redis answered lately, for readiness and `/info`.
#[derive(Debug, Clone)]
pub struct Health {
    pub connected: bool,
    /// The last error, while disconnected.
    pub error: Option<String>,
}

/// The queue, shared by every handler and task of a replica. Cloning shares it.
#[derive(Clone)]
pub struct RedisQueue {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    conn: ConnectionManager,
    /// Blocking reads get their own connection: on the shared multiplexed
    /// one they would hold up every other command.
    reader: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    keys: Keys,
    config: QueueConfig,
    connected: AtomicBool,
    last_error: Mutex<Option<String>>,
    telemetry: Arc<dyn QueueTelemetry>,
}

/// Commands wait at most this long for an answer; a blocking read adds its block time.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

fn connection_config(extra: Duration) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(ANSWER_TIMEOUT))
        .set_response_timeout(Some(ANSWER_TIMEOUT + extra))
}

impl RedisQueue {
    /// Connects lazily: the server starts (and serves synchronous APIs)
    /// while Redis is down, and reconnects with backoff.
    pub fn new(
        config: QueueConfig,
        telemetry: Option<Arc<dyn QueueTelemetry>>,
    ) -> Result<Self, QueueError> {
        let mut info = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| QueueError::Config(format!("--redis-url: {e}")))?;
        if let Some(p) = &config.password {
            let settings = info.redis_settings().clone().set_password(p);
            info = info.set_redis_settings(settings);
        }
        let client = Client::open(info).map_err(|e| QueueError::Config(e.to_string()))?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(ANSWER_TIMEOUT))
            .set_response_timeout(Some(ANSWER_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager)
            .map_err(|e| QueueError::Config(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                conn,
                reader: tokio::sync::Mutex::new(None),
                keys: Keys::new(&config.queue),
                config,
                connected: AtomicBool::new(false),
                last_error: Mutex::new(Some("not connected yet".into())),
                telemetry: telemetry.unwrap_or_else(|| Arc::new(NoTelemetry)),
            }),
        })
    }

    pub fn config(&self) -> &QueueConfig {
        &self.inner.config
    }

    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    pub fn health(&self) -> Health {
        Health {
            connected: self.inner.connected.load(Ordering::SeqCst),
            error: self
                .inner
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or(None),
        }
    }

    /// Times a call and records whether Redis answered.
    async fn call<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, redis::RedisError>>,
    ) -> Result<T, QueueError> {
        let started = Instant::now();
        let out = fut.await.map_err(QueueError::from);
        let ok = !matches!(out, Err(QueueError::Unavailable(_)));
        self.inner.telemetry.redis_call(op, started.elapsed(), ok);
        let was = self.inner.connected.swap(ok, Ordering::SeqCst);
        if let Ok(mut e) = self.inner.last_error.lock() {
            match &out {
                Err(QueueError::Unavailable(msg)) => {
                    if was {
                        tracing::warn!(op, error = %msg, "redis unavailable");
                    }
                    *e = Some(msg.clone());
                }
                _ => {
                    if !was {
                        tracing::info!(op, "redis reachable");
                    }
                    *e = None;
                }
            }
        }
        out
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// Checks the connection (and creates the consumer group, which must
    /// exist before anyone reads); run at start-up and then periodically.
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut c = self.conn();
        let keys = &self.inner.keys;
        self.call("ping", async {
            let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&keys.stream)
                .arg(keys::GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut c)
                .await;
            match created {
                Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
                other => other,
            }
        })
        .await
    }

    /// Stores a job and queues it, atomically; returns once Redis has it.
    pub async fn accept(&self, job: &NewJob) -> Result<Accepted, QueueError> {
        let keys = &self.inner.keys;
        let idem = job
            .idempotency_key
            .as_deref()
            .map(|k| keys.idempotency(k))
            .unwrap_or_default();
        let mut c = self.conn();
        let reply: Vec<String> = self
            .call(
                "accept",
                scripts::ACCEPT
                    .key(keys.job(&job.id))
                    .key(keys.events(&job.id))
                    .key(&keys.stream)
                    .key(idem)
                    .arg(&job.id)
                    .arg(&job.spec)
                    .arg(job.total_steps)
                    .arg(job.created_unix)
                    .arg(job.request_id.as_deref().unwrap_or(""))
                    .arg(&job.provenance)
                    .arg(&job.queued_event)
                    .invoke_async(&mut c),
            )
            .await?;
        match reply.as_slice() {
            [flag, entry] if flag == "new" => Ok(Accepted::New {
                entry: entry.clone(),
            }),
            [flag, id] if flag == "existing" => Ok(Accepted::Existing { id: id.clone() }),
            other => Err(QueueError::Protocol(format!("accept answered {other:?}"))),
        }
    }

    pub async fn get(&self, id: &str) -> Result<Lookup<JobRecord>, QueueError> {
        let keys = &self.inner.keys;
        let mut c = self.conn();
        let (fields, gone): (HashMap<String, Vec<u8>>, bool) = self
            .call(
                "get",
                redis::pipe()
                    .hgetall(keys.job(id))
                    .exists(keys.gone(id))
                    .query_async(&mut c),
            )
            .await?;
        if fields.is_empty() {
            return Ok(if gone { Lookup::Gone } else { Lookup::NotFound });
        }
        record(&fields).map(Lookup::Found)
    }

    /// Entries waiting ahead of `entry` that no replica has read yet (0 once read).
    pub async fn position(&self, entry: &str) -> Result<usize, QueueError> {
        let keys = &self.inner.keys;
        let mut c = self.conn();
        let n: i64 = self
            .call(
                "position",
                scripts::POSITION
                    .key(&keys.stream)
                    .arg(keys::GROUP)
                    .arg(entry)
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Entries no replica has read yet: the fleet's queue length.
    pub async fn waiting(&self) -> Result<u64, QueueError> {
        let keys = &self.inner.keys;
        let mut c = self.conn();
        let n: i64 = self
            .call(
                "waiting",
                scripts::POSITION
                    .key(&keys.stream)
                    .arg(keys::GROUP)
                    .arg("+")
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub async fn cancel(&self, id: &str, event: &str) -> Result<Cancel, QueueError> {
        let keys = &self.inner.keys;
        let mut c = self.conn();
        let reply: String = self
            .call(
                "cancel",
                scripts::CANCEL
                    .key(keys.job(id))
                    .key(keys.events(id))
                    .key(&keys.stream)
                    .key(keys.gone(id))
                    .arg(keys::GROUP)
                    .arg(event)
                    .arg(self.ttl_secs())
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(match reply.as_str() {
            "missing" => Cancel::NotFound,
            "cancelled" => Cancel::Cancelled,
            "requested" => Cancel::Requested,
            _ => Cancel::Finished,
        })
    }

    fn ttl_secs(&self) -> u64 {
        self.inner.config.result_ttl.as_secs().max(1)
    }

    fn me(&self) -> &str {
        &self.inner.config.consumer
    }

    /// Reads up to `count` new entries, waiting up to `block` for one.
    pub async fn read_new(
        &self,
        count: usize,
        block: Duration,
    ) -> Result<Vec<(String, String)>, QueueError> {
        let keys = &self.inner.keys;
        let mut guard = self.inner.reader.lock().await;
        if guard.is_none() {
            let conn = self
                .call(
                    "connect",
                    self.inner
                        .client
                        .get_multiplexed_async_connection_with_config(&connection_config(block)),
                )
                .await?;
            *guard = Some(conn);
        }
        let Some(conn) = guard.as_mut() else {
            return Ok(Vec::new());
        };
        let reply: Result<Value, QueueError> = self
            .call(
                "read",
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(keys::GROUP)
                    .arg(self.me())
                    .arg("COUNT")
                    .arg(count.max(1))
                    .arg("BLOCK")
                    .arg(block.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&keys.stream)
                    .arg(">")
                    .query_async(conn),
            )
            .await;
        match reply {
            Ok(v) => entries_of_read(&v),
            Err(e) => {
                // A broken reader is rebuilt on the next call.
                *guard = None;
                Err(e)
            }
        }
    }

    /// Takes over up to `count` entries idle past the visibility timeout.
    pub async fn claim_idle(&self, count: usize) -> Result<Vec<(String, String)>, QueueError> {
        let keys = &self.inner.keys;
        let mut c = self.conn();
        let idle = self.inner.config.visibility_timeout.as_millis() as u64;
        let reply: Value = self
            .call(
                "claim",
                redis::cmd("XAUTOCLAIM")
                    .arg(&keys.stream)
                    .arg(keys::GROUP)
                    .arg(self.me())
                    .arg(idle)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(count.max(1))
                    .query_async(&mut c),
            )
            .await?;
        match reply {
            Value::Array(parts) if parts.len() >= 2 => entries(&parts[1]),
            other => Err(QueueError::Protocol(format!(
                "XAUTOCLAIM answered {other:?}"
            ))),
        }
    }

    /// Makes this replica the owner of the job behind `entry`; `None` when
    /// there is nothing to run (ended, replaced by a newer entry, or
    /// expired): the entry is then acknowledged and dropped.
    pub async fn take(&self, id: &str, entry: &str) -> Result<Option<Taken>, QueueError> {
        let keys = &self.inner.keys;
        let mut c = self.conn();
        let reply: Vec<Vec<u8>> = self
            .call(
                "take",
                scripts::TAKE
                    .key(keys.job(id))
                    .key(&keys.stream)
                    .arg(self.me())
                    .arg(entry)
                    .arg(keys::GROUP)
                    .invoke_async(&mut c),
            )
            .await?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match reply.as_slice() {
            [flag, previous, spec, checkpoint] if flag.as_slice() == b"ok" => Ok(Some(Taken {
                id: id.to_string(),
                entry: entry.to_string(),
                spec: text(spec),
                checkpoint: (!checkpoint.is_empty()).then(|| checkpoint.clone()),
                claimed_from: (!previous.is_empty()).then(|| text(previous)),
            })),
            [flag] if flag.as_slice() == b"skip" => Ok(None),
            other => Err(QueueError::Protocol(format!(
                "take answered {} values",
                other.len()
            ))),
        }
    }

    /// Keeps this replica's entries from looking idle; says per job whether
    /// it is still this replica's and whether a client cancelled it.
    pub async fn heartbeat(&self, jobs: &[(String, String)]) -> Result<Vec<Beat>, QueueError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let keys = &self.inner.keys;
        let mut inv = scripts::HEARTBEAT.key(&keys.stream);
        for (id, _) in jobs {
            inv.key(keys.job(id));
        }
        inv.arg(keys::GROUP).arg(self.me());
        for (_, entry) in jobs {
            inv.arg(entry);
        }
        let mut c = self.conn();
        let reply: Vec<String> = self.call("heartbeat", inv.invoke_async(&mut c)).await?;
        Ok(reply
            .iter()
            .map(|r| match r.as_str() {
                "lost" => Beat::Lost,
                flag => Beat::Held {
                    cancel: flag == "cancel",
                },
            })
            .collect())
    }

    /// Records progress and appends `event`; false if the job is no longer this replica's.
    pub async fn progress(
        &self,
        id: &str,
        status: RecordStatus,
        step: u32,
        provenance: Option<&str>,
        event: &str,
    ) -> Result<bool, QueueError> {
        let keys = &self.inner.keys;
        let mut c = self.conn();
        let ok: i64 = self
            .call(
                "progress",
                scripts::PROGRESS
                    .key(keys.job(id))
                    .key(keys.events(id))
                    .arg(self.me())
                    .arg(status.as_str())
                    .arg(step)
                    .arg(provenance.unwrap_or(""))
                    .arg(event)
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(ok == 1)
    }

    /// Stores where a job stands; false if the job is no longer this replica's.
    pub async fn checkpoint(&self, id: &str, step: u32, bytes: &[u8]) -> Result<bool, QueueError> {
        let keys = &self.inner.keys;
        let mut c = self.conn();
        let ok: i64 = self
            .call(
                "checkpoint",
                scripts::CHECKPOINT
                    .key(keys.job(id))
                    .arg(self.me())
                    .arg(step)
                    .arg(bytes)
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(ok == 1)
    }

    /// Ends a job this replica owns: status, result, last event, and its
    /// entry acknowledged; from then on it expires after the result TTL.
    /// False if the job is no longer this replica's (nothing was written).
    pub async fn finish(&self, id: &str, entry: &str, end: &Terminal) -> Result<bool, QueueError> {
        let keys = &self.inner.keys;
        let mut c = self.conn();
        let ok: i64 = self
            .call(
                "finish",
                scripts::FINISH
                    .key(keys.job(id))
                    .key(keys.events(id))
                    .key(&keys.stream)
                    .key(keys.gone(id))
                    .arg(self.me())
                    .arg(end.status.as_str())
                    .arg(end.error.as_deref().unwrap_or(""))
                    .arg(end.result.as_deref().unwrap_or(b""))
                    .arg(&end.provenance)
                    .arg(&end.event)
                    .arg(entry)
                    .arg(keys::GROUP)
                    .arg(self.ttl_secs())
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(ok == 1)
    }

    /// Puts a job this replica owns back on the queue (a new entry, at the
    /// end), with `checkpoint` if it made progress; returns the new entry,
    /// or `None` if the job is no longer this replica's.
    pub async fn hand_back(
        &self,
        id: &str,
        entry: &str,
        checkpoint: Option<(u32, &[u8])>,
        event: &str,
    ) -> Result<Option<String>, QueueError> {
        let keys = &self.inner.keys;
        let mut c = self.conn();
        let (step, bytes) = checkpoint.unwrap_or((0, b""));
        let reply: String = self
            .call(
                "hand_back",
                scripts::HAND_BACK
                    .key(keys.job(id))
                    .key(keys.events(id))
                    .key(&keys.stream)
                    .arg(self.me())
                    .arg(entry)
                    .arg(keys::GROUP)
                    .arg(step)
                    .arg(bytes)
                    .arg(event)
                    .arg(id)
                    .invoke_async(&mut c),
            )
            .await?;
        Ok((!reply.is_empty()).then_some(reply))
    }

    /// Acknowledges and drops an entry with nothing to run.
    pub async fn drop_entry(&self, entry: &str) -> Result<(), QueueError> {
        let keys = &self.inner.keys;
        let mut c = self.conn();
        self.call(
            "ack",
            redis::pipe()
                .cmd("XACK")
                .arg(&keys.stream)
                .arg(keys::GROUP)
                .arg(entry)
                .ignore()
                .cmd("XDEL")
                .arg(&keys.stream)
                .arg(entry)
                .ignore()
                .query_async::<()>(&mut c),
        )
        .await
    }

    /// The latest event of a job (what a late subscriber catches up with).
    pub async fn last_event(&self, id: &str) -> Result<Option<StreamEvent>, QueueError> {
        let keys = &self.inner.keys;
        let mut c = self.conn();
        let reply: Value = self
            .call(
                "events",
                redis::cmd("XREVRANGE")
                    .arg(keys.events(id))
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut c),
            )
            .await?;
        Ok(stream_events(&reply)?.into_iter().next())
    }

    /// A connection of its own for one subscriber's blocking reads.
    pub async fn subscriber(&self, block: Duration) -> Result<Subscriber, QueueError> {
        let conn = self
            .call(
                "connect",
                self.inner
                    .client
                    .get_multiplexed_async_connection_with_config(&connection_config(block)),
            )
            .await?;
        Ok(Subscriber {
            queue: self.clone(),
            conn,
            block,
        })
    }

    /// Keeps an encoded image behind a `url` link for the result TTL.
    pub async fn keep_file(&self, name: &str, bytes: &[u8]) -> Result<(), QueueError> {
        let key = self.inner.keys.file(name);
        let mut c = self.conn();
        let ttl = self.ttl_secs();
        self.call(
            "keep_file",
            redis::cmd("SET")
                .arg(key)
                .arg(bytes)
                .arg("EX")
                .arg(ttl)
                .query_async::<()>(&mut c),
        )
        .await
    }

    pub async fn file(&self, name: &str) -> Result<Option<Vec<u8>>, QueueError> {
        let key = self.inner.keys.file(name);
        let mut c = self.conn();
        self.call("file", redis::cmd("GET").arg(key).query_async(&mut c))
            .await
    }
}

/// One SSE subscriber's reads of a job's events.
pub struct Subscriber {
    queue: RedisQueue,
    conn: MultiplexedConnection,
    block: Duration,
}

impl Subscriber {
    /// Events after `after`, waiting up to the block time for one.
    pub async fn next(&mut self, id: &str, after: &str) -> Result<Vec<StreamEvent>, QueueError> {
        let key = self.queue.inner.keys.events(id);
        let reply: Value = self
            .queue
            .call(
                "events",
                redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(64)
                    .arg("BLOCK")
                    .arg(self.block.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(key)
                    .arg(after)
                    .query_async(&mut self.conn),
            )
            .await?;
        match reply {
            Value::Nil => Ok(Vec::new()),
            Value::Array(streams) => match streams.first() {
                Some(Value::Array(pair)) if pair.len() == 2 => stream_events(&pair[1]),
                _ => Ok(Vec::new()),
            },
            other => Err(QueueError::Protocol(format!("XREAD answered {other:?}"))),
        }
    }
}

fn bulk(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// `[[entry-id, [field, value, …]], …]`, as the entry ids and the `id` field.
fn entries(v: &Value) -> Result<Vec<(String, String)>, QueueError> {
    Ok(stream_fields(v)?
        .into_iter()
        .filter_map(|(entry, fields)| fields.get("id").map(|id| (entry, id.clone())))
        .collect())
}

fn stream_events(v: &Value) -> Result<Vec<StreamEvent>, QueueError> {
    Ok(stream_fields(v)?
        .into_iter()
        .filter_map(|(id, fields)| {
            fields.get("e").map(|d| StreamEvent {
                id,
                data: d.clone(),
            })
        })
        .collect())
}

/// A stream entry: its id and fields.
type Entry = (String, HashMap<String, String>);

fn stream_fields(v: &Value) -> Result<Vec<Entry>, QueueError> {
    let Value::Array(items) = v else {
        return match v {
            Value::Nil => Ok(Vec::new()),
            other => Err(QueueError::Protocol(format!(
                "expected entries, got {other:?}"
            ))),
        };
    };
    let mut out = Vec::new();
    for item in items {
        // A deleted entry still pending shows as [id, nil]; skip it.
        let Value::Array(pair) = item else { continue };
        let (Some(id), Some(Value::Array(kv))) = (pair.first().and_then(bulk), pair.get(1)) else {
            continue;
        };
        let mut fields = HashMap::new();
        for f in kv.chunks(2) {
            if let [k, v] = f
                && let (Some(k), Some(v)) = (bulk(k), bulk(v))
            {
                fields.insert(k, v);
            }
        }
        out.push((id, fields));
    }
    Ok(out)
}

fn entries_of_read(v: &Value) -> Result<Vec<(String, String)>, QueueError> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => match streams.first() {
            Some(Value::Array(pair)) if pair.len() == 2 => entries(&pair[1]),
            _ => Ok(Vec::new()),
        },
        // RESP3 answers a map of stream name to entries.
        Value::Map(m) => match m.first() {
            Some((_, e)) => entries(e),
            None => Ok(Vec::new()),
        },
        other => Err(QueueError::Protocol(format!(
            "XREADGROUP answered {other:?}"
        ))),
    }
}

fn record(f: &HashMap<String, Vec<u8>>) -> Result<JobRecord, QueueError> {
    let text = |k: &str| f.get(k).map(|b| String::from_utf8_lossy(b).into_owned());
    let number = |k: &str| text(k).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let status = text("status")
        .as_deref()
        .and_then(RecordStatus::parse)
        .ok_or_else(|| QueueError::Protocol("a job hash without a valid status".into()))?;
    let non_empty = |k: &str| text(k).filter(|s| !s.is_empty());
    Ok(JobRecord {
        status,
        spec: text("spec").unwrap_or_default(),
        provenance: text("provenance").unwrap_or_default(),
        step: number("step") as u32,
        total_steps: number("total") as u32,
        created_unix: number("created"),
        request_id: non_empty("request_id"),
        error: non_empty("error"),
        result: f.get("result").filter(|b| !b.is_empty()).cloned(),
        entry: text("entry").unwrap_or_default(),
        owner: non_empty("owner"),
        claims: number("claims") as u32,
    })
}
