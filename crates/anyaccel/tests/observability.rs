//! `anyaccel serve --log-format json --otlp-endpoint ...` against a real OTLP
//! trace receiver (a gRPC server built from the protocol's own definitions):
//! a request's id is on its JSON log lines, on its exported request span, and
//! on the batch span that is that span's child, with the pipeline's stages inside.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Server, free_port, repo};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::Value;

struct Receiver(mpsc::Sender<Span>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for span in ss.spans {
                    let _ = self.0.send(span);
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .and_then(|v| match v {
            AnyValue::StringValue(s) => Some(s.clone()),
            _ => None,
        })
}

#[test]
fn request_ids_reach_json_logs_and_exported_traces() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (spans_tx, spans) = mpsc::channel();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let otlp = listener.local_addr().unwrap();
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Receiver(spans_tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_anyaccel"))
        .args([
            "serve",
            "--model",
            "fixtures/models/tiny-sd15",
            "--host",
            "127.0.0.1",
        ])
        .args([
            "--port",
            &port.to_string(),
            "--sizes",
            "64x64",
            "--device",
            "cpu",
        ])
        .args(["--threads", "1", "--log-format", "json"])
        .args(["--otlp-endpoint", &format!("http://{otlp}")])
        .current_dir(repo())
        .env("RUST_LOG", "info")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server starts");
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    // Ready once it logs that it listens and warm-up is done: wait on the log.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ready = false;
    while !ready {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("server logs until ready");
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        ready = v["fields"]["message"] == "warmed up";
    }

    let resp = ureq::post(&format!("{}/v1/images/generations", server.base))
        .set("x-request-id", "otel-test-1")
        .send_json(serde_json::json!({"prompt": "x", "steps": 2, "size": "64x64"}))
        .unwrap();
    assert_eq!(resp.header("x-request-id"), Some("otel-test-1"));

    // Logs: the request's line and its batch's, both naming the id.
    let (mut request_line, mut batch_line) = (false, false);
    while !(request_line && batch_line) {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("request and batch log lines");
        let v: Value = serde_json::from_str(&line).unwrap();
        let message = &v["fields"]["message"];
        if message == "request finished" && v["span"]["request_id"] == "otel-test-1" {
            request_line = true;
        }
        if message == "batch finished"
            && v["span"]["request_ids"]
                .as_str()
                .is_some_and(|ids| ids.contains("otel-test-1"))
        {
            batch_line = true;
        }
    }

    // Traces: the request span with its id, and the batch span as its child.
    let mut request_span: Option<Span> = None;
    let mut batches: Vec<Span> = Vec::new();
    let mut stages: Vec<Span> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = &request_span
            && let Some(b) = batches.iter().find(|b| b.parent_span_id == r.span_id)
            && stages
                .iter()
                .any(|s| s.name == "denoise" && s.parent_span_id == b.span_id)
        {
            assert_eq!(b.trace_id, r.trace_id);
            assert_eq!(
                attribute(r, "route").as_deref(),
                Some("/v1/images/generations")
            );
            break;
        }
        let span = spans
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("exported spans");
        match span.name.as_str() {
            "http_request" if attribute(&span, "request_id").as_deref() == Some("otel-test-1") => {
                request_span = Some(span)
            }
            "batch" => batches.push(span),
            "text_encode" | "denoise" | "vae_decode" => stages.push(span),
            _ => {}
        }
    }
    drop(server);
}
