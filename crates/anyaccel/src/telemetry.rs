//! Logs and traces: text or JSON lines on stderr (for people and for log
//! shippers), and OpenTelemetry trace export over OTLP/gRPC when an
//! endpoint is configured. Request spans carry the `x-request-id`, so every
//! line and every exported span of a request can be found by it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    /// One JSON object per line, with the current span's fields (request_id).
    Json,
}

#[derive(Args, Debug)]
pub struct TelemetryArgs {
    /// Log lines on stderr: text or json. Levels come from RUST_LOG (default info).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "ANYACCEL_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// Export traces over OTLP/gRPC to this endpoint (e.g. http://otel-collector:4317).
    /// Default: OTEL_EXPORTER_OTLP_ENDPOINT when set; otherwise no export.
    #[arg(long, global = true, env = "ANYACCEL_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Flushes exported spans when dropped (at the end of `main`).
pub struct Guard {
    provider: Option<SdkTracerProvider>,
    _runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("trace export did not flush: {e}");
        }
    }
}

pub fn init(args: &TelemetryArgs) -> anyhow::Result<Guard> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match args.log_format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    let endpoint = args
        .otlp_endpoint
        .clone()
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|e| !e.trim().is_empty());
    let Some(endpoint) = endpoint else {
        tracing_subscriber::registry()
            .with(logs.with_filter(filter()))
            .init();
        return Ok(Guard {
            provider: None,
            _runtime: None,
        });
    };
    // The SDK exports from its own thread, but tonic needs a Tokio reactor:
    // give the exporter a small runtime of its own.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("anyaccel-otlp")
        .enable_all()
        .build()
        .context("starting the trace export runtime")?;
    let exporter = {
        let _entered = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(Duration::from_secs(5))
            .build()
            .with_context(|| format!("--otlp-endpoint {endpoint}"))?
    };
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "anyaccel".into());
    let mut resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ));
    if let Ok(pool) = std::env::var(anyaccel_metrics::env::POOL) {
        resource = resource.with_attribute(opentelemetry::KeyValue::new("anyaccel.pool", pool));
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(OnRuntime {
            inner: Arc::new(exporter),
            runtime: runtime.handle().clone(),
        })
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("anyaccel");
    tracing_subscriber::registry()
        .with(logs.with_filter(filter()))
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(filter()),
        )
        .init();
    tracing::info!(%endpoint, "exporting traces over OTLP");
    Ok(Guard {
        provider: Some(provider),
        _runtime: Some(runtime),
    })
}

/// Runs each export on the exporter's runtime; the SDK's batch thread
/// only waits for the result.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: Arc<E>,
    runtime: tokio::runtime::Handle,
}

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = self.inner.clone();
        self.runtime
            .spawn(async move { inner.export(batch).await })
            .await
            .unwrap_or_else(|e| {
                Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                    e.to_string(),
                ))
            })
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}
