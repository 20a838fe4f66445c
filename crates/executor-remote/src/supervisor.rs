//! Starts the Python sidecar, waits until it serves, watches it, and restarts
//! it with backoff when it dies or stops answering.
//!
//! Each start is a *generation*. Calls remember the generation they were sent
//! to; when that generation dies, the supervisor publishes it on `deaths` and
//! every call still waiting on it fails at once with a clear message.

use std::collections::VecDeque;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::RemoteError;
use crate::config::{RemoteConfig, TorchCompile};
use crate::proto::sidecar_client::SidecarClient;
use crate::proto::{CapabilitiesRequest, CapabilitiesResponse, HealthRequest, health_response};

pub(crate) type Client = SidecarClient<Channel>;

/// Lines of sidecar output kept for error messages.
const LOG_TAIL: usize = 40;
/// Time a stopping sidecar gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A generation that died, and why.
#[derive(Debug, Clone, Default)]
pub(crate) struct Death {
    pub generation: u64,
    pub reason: String,
}

/// The connection calls use.
#[derive(Default)]
pub(crate) struct Conn {
    /// Set while the current generation serves.
    pub client: Option<Client>,
    pub generation: u64,
    pub pid: Option<u32>,
    /// Starts after the first one.
    pub restarts: u64,
    /// Why the sidecar is not serving (empty while it serves).
    pub down: String,
}

pub(crate) struct Shared {
    pub ready: AtomicBool,
    pub conn: Mutex<Conn>,
    pub deaths: watch::Sender<Death>,
    pub shutdown: watch::Sender<bool>,
    pub log_tail: Mutex<VecDeque<String>>,
}

impl Shared {
    pub fn new() -> Self {
        Self {
            ready: AtomicBool::new(false),
            conn: Mutex::new(Conn {
                down: "starting".into(),
                ..Conn::default()
            }),
            deaths: watch::Sender::new(Death::default()),
            shutdown: watch::Sender::new(false),
            log_tail: Mutex::new(VecDeque::new()),
        }
    }

    pub fn conn(&self) -> MutexGuard<'_, Conn> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tail(&self) -> String {
        let tail = self.log_tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

enum Outcome {
    Shutdown,
    StartFailed(RemoteError),
    Died { reason: String, served: Duration },
}

/// The supervisor task: runs until shutdown, or until the very first start fails
/// (reported through `first`, so `spawn` returns the error instead of retrying a
/// configuration that cannot work).
pub(crate) async fn supervise(
    shared: Arc<Shared>,
    cfg: Arc<RemoteConfig>,
    socket: Arc<Path>,
    first: oneshot::Sender<Result<CapabilitiesResponse, RemoteError>>,
) {
    let mut first = Some(first);
    let mut failures = 0u32;
    let mut generation = 0u64;
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        if *shutdown.borrow() {
            break;
        }
        generation += 1;
        let reason = match run_once(
            &shared,
            &cfg,
            &socket,
            generation,
            &mut first,
            &mut shutdown,
        )
        .await
        {
            Outcome::Shutdown => break,
            Outcome::StartFailed(err) => {
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(err));
                    break;
                }
                tracing::error!(generation, "sidecar restart failed: {err}");
                format!("restart failed: {err}")
            }
            Outcome::Died { reason, served } => {
                if served >= cfg.backoff.reset_after {
                    failures = 0;
                }
                reason
            }
        };
        failures += 1;
        let delay = cfg.backoff.delay(failures);
        {
            let mut conn = shared.conn();
            conn.restarts += 1;
            conn.down = format!(
                "{reason}; restarting in {delay:.1?} (restart {})",
                conn.restarts
            );
        }
        tracing::warn!(restart_in = ?delay, "sidecar down: {reason}");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            () = stopped(&mut shutdown) => break,
        }
    }
    shared.ready.store(false, Ordering::SeqCst);
    let mut conn = shared.conn();
    conn.client = None;
    conn.pid = None;
    conn.down = "the executor was shut down".into();
}

async fn run_once(
    shared: &Arc<Shared>,
    cfg: &RemoteConfig,
    socket: &Path,
    generation: u64,
    first: &mut Option<oneshot::Sender<Result<CapabilitiesResponse, RemoteError>>>,
    shutdown: &mut watch::Receiver<bool>,
) -> Outcome {
    let _ = std::fs::remove_file(socket);
    shared
        .log_tail
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    let mut child = match command(cfg, socket).spawn() {
        Ok(c) => c,
        Err(e) => {
            return Outcome::StartFailed(RemoteError::Spawn {
                python: cfg.python.clone(),
                source: e,
            });
        }
    };
    let pid = child.id().unwrap_or_default();
    tracing::info!(pid, generation, model = %cfg.model, device = %cfg.device, "sidecar started");
    let mut logs = Vec::new();
    if let Some(out) = child.stdout.take() {
        logs.push(forward(out, pid, shared.clone()));
    }
    if let Some(err) = child.stderr.take() {
        logs.push(forward(err, pid, shared.clone()));
    }
    {
        let mut conn = shared.conn();
        conn.generation = generation;
        conn.pid = Some(pid);
    }

    let client = match wait_healthy(&mut child, cfg, socket, shutdown).await {
        Ok(c) => c,
        Err(Startup::Shutdown) => {
            stop(&mut child, pid).await;
            return Outcome::Shutdown;
        }
        Err(Startup::Exited(status)) => {
            drain(logs).await;
            return Outcome::StartFailed(RemoteError::Exited {
                status: describe(status),
                log: shared.tail(),
            });
        }
        Err(Startup::TimedOut(last)) => {
            let _ = child.kill().await;
            drain(logs).await;
            return Outcome::StartFailed(RemoteError::StartupTimeout {
                after: cfg.startup_timeout,
                last,
                log: shared.tail(),
            });
        }
    };

    let caps = match client
        .clone()
        .get_capabilities(CapabilitiesRequest {})
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => {
            let _ = child.kill().await;
            return Outcome::StartFailed(RemoteError::Capabilities(status.message().to_string()));
        }
    };
    {
        let mut conn = shared.conn();
        conn.client = Some(client.clone());
        conn.down.clear();
    }
    shared.ready.store(true, Ordering::SeqCst);
    tracing::info!(pid, generation, "sidecar ready");
    // Only now: `spawn` returns on this message, and its caller may call at once.
    match first.take() {
        Some(tx) => {
            let _ = tx.send(Ok(caps));
        }
        None => tracing::debug!(pid, runtime = %caps.runtime, "sidecar capabilities after restart"),
    }
    let since = Instant::now();

    let health = watch_health(client, cfg);
    tokio::pin!(health);
    let reason = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => format!("sidecar (pid {pid}) exited: {}", describe(s)),
            Err(e) => format!("sidecar (pid {pid}) could not be waited on: {e}"),
        },
        why = &mut health => {
            let _ = child.kill().await;
            format!("sidecar (pid {pid}) was killed: {why}")
        }
        () = stopped(shutdown) => {
            shared.ready.store(false, Ordering::SeqCst);
            stop(&mut child, pid).await;
            return Outcome::Shutdown;
        }
    };
    // Readiness drops before in-flight calls learn of the death, so a caller
    // that sees the error also sees `is_ready() == false`.
    shared.ready.store(false, Ordering::SeqCst);
    {
        let mut conn = shared.conn();
        conn.client = None;
        conn.pid = None;
        conn.down = reason.clone();
    }
    drain(logs).await;
    let tail = shared.tail();
    let last_lines: Vec<&str> = tail.lines().rev().take(5).collect();
    if !last_lines.is_empty() {
        tracing::warn!(
            pid,
            "last sidecar output:\n{}",
            last_lines.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    shared.deaths.send_replace(Death {
        generation,
        reason: reason.clone(),
    });
    Outcome::Died {
        reason,
        served: since.elapsed(),
    }
}

fn command(cfg: &RemoteConfig, socket: &Path) -> Command {
    let mut cmd = Command::new(&cfg.python);
    cmd.arg("-m")
        .arg("anyaccel_sidecar")
        .arg("--socket")
        .arg(socket)
        .arg("--model")
        .arg(&cfg.model)
        .arg("--device")
        .arg(cfg.device.as_str())
        .arg("--parent-pid")
        .arg(std::process::id().to_string());
    if let Some(d) = &cfg.dtype {
        cmd.arg("--dtype").arg(d);
    }
    if let Some(n) = cfg.threads {
        cmd.arg("--threads").arg(n.to_string());
    }
    if cfg.compile != TorchCompile::Off {
        cmd.arg("--compile").arg(cfg.compile.as_str());
    }
    cmd.args(&cfg.extra_args);
    if let Some(p) = &cfg.python_path {
        let mut paths = vec![p.clone()];
        if let Some(existing) = std::env::var_os("PYTHONPATH") {
            paths.extend(std::env::split_paths(&existing));
        }
        if let Ok(joined) = std::env::join_paths(paths) {
            cmd.env("PYTHONPATH", joined);
        }
    }
    cmd.env("PYTHONUNBUFFERED", "1")
        .env("TOKENIZERS_PARALLELISM", "false")
        .envs(cfg.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C meant for the service does not kill the
        // sidecar under a draining server; the supervisor stops it.
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

/// Copies the sidecar's output lines into our log and the error-message tail.
fn forward(
    reader: impl AsyncRead + Unpin + Send + 'static,
    pid: u32,
    shared: Arc<Shared>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("ERROR")
                || line.starts_with("CRITICAL")
                || line.starts_with("Traceback")
            {
                tracing::warn!(target: "anyaccel_sidecar", pid, "{line}");
            } else {
                tracing::info!(target: "anyaccel_sidecar", pid, "{line}");
            }
            let mut tail = shared.log_tail.lock().unwrap_or_else(|e| e.into_inner());
            if tail.len() == LOG_TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    })
}

/// Lets the log forwarders read what a dead process wrote last.
async fn drain(logs: Vec<JoinHandle<()>>) {
    for h in logs {
        let _ = tokio::time::timeout(Duration::from_secs(1), h).await;
    }
}

enum Startup {
    Shutdown,
    Exited(ExitStatus),
    TimedOut(String),
}

async fn wait_healthy(
    child: &mut Child,
    cfg: &RemoteConfig,
    socket: &Path,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Client, Startup> {
    let deadline = Instant::now() + cfg.startup_timeout;
    let mut last = String::from("the sidecar never opened its socket");
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Err(Startup::Exited(status)),
            Ok(None) => {}
            Err(e) => {
                return Err(Startup::TimedOut(format!(
                    "could not poll the process: {e}"
                )));
            }
        }
        if *shutdown.borrow() {
            return Err(Startup::Shutdown);
        }
        if Instant::now() >= deadline {
            return Err(Startup::TimedOut(last));
        }
        if socket.exists() {
            match connect(socket).await {
                Ok(channel) => {
                    let mut client = client(channel);
                    match tokio::time::timeout(cfg.health_timeout, client.health(HealthRequest {}))
                        .await
                    {
                        Ok(Ok(r)) => {
                            let r = r.into_inner();
                            last = r.message.clone();
                            if r.status() == health_response::Status::Serving {
                                return Ok(client);
                            }
                        }
                        Ok(Err(status)) => {
                            last = format!("health check failed: {}", status.message())
                        }
                        Err(_) => last = "health check timed out".into(),
                    }
                }
                Err(e) => last = format!("could not connect to {}: {e}", socket.display()),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Resolves when the sidecar has failed `health_failures` probes in a row.
async fn watch_health(mut client: Client, cfg: &RemoteConfig) -> String {
    let mut misses = 0u32;
    loop {
        tokio::time::sleep(cfg.health_interval).await;
        let why =
            match tokio::time::timeout(cfg.health_timeout, client.health(HealthRequest {})).await {
                Ok(Ok(r)) if r.get_ref().status() == health_response::Status::Serving => {
                    misses = 0;
                    continue;
                }
                Ok(Ok(r)) => format!(
                    "reported {:?}: {}",
                    r.get_ref().status(),
                    r.get_ref().message
                ),
                Ok(Err(status)) => format!("health check failed: {}", status.message()),
                Err(_) => format!("no health answer within {:?}", cfg.health_timeout),
            };
        misses += 1;
        tracing::warn!(misses, "sidecar health check failed: {why}");
        if misses >= cfg.health_failures.max(1) {
            return format!("unresponsive ({misses} failed health checks; last: {why})");
        }
    }
}

pub(crate) async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = socket.to_path_buf();
    // The URI is required by the API but unused: the connector dials the socket.
    Endpoint::from_static("http://sidecar.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

pub(crate) fn client(channel: Channel) -> Client {
    SidecarClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

/// SIGTERM, then SIGKILL after the grace period.
async fn stop(child: &mut Child, pid: u32) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    terminate(pid);
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            pid,
            "sidecar ignored SIGTERM for {STOP_GRACE:?}; killing it"
        );
        let _ = child.kill().await;
    }
}

/// Resolves once shutdown is requested (the guard `wait_for` returns is not `Send`).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Sends SIGTERM to `pid`.
pub(crate) fn terminate(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is a positive
    // process id of a child we started (never 0 or -1, which would signal groups).
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(3), _) => "exit status 3 (the model could not be loaded)".into(),
        (_, Some(sig)) => format!("killed by signal {sig}{}", signal_name(sig)),
        _ => status.to_string(),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => " (SIGKILL; out of memory, or killed by an operator)",
        libc::SIGTERM => " (SIGTERM)",
        libc::SIGSEGV => " (SIGSEGV; a crash in native code)",
        libc::SIGABRT => " (SIGABRT; a crash in native code)",
        libc::SIGBUS => " (SIGBUS)",
        _ => "",
    }
}
