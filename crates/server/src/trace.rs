//! Request ids and the request span: every request gets an `x-request-id`
//! (the caller's, when it sent a sensible one), every response carries it,
//! and everything done for the request (admission, the batch it ran in,
//! each pipeline stage) is logged and traced under it.

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static CURRENT: String;
}

/// The id of the request being served by this task, if any.
pub fn request_id() -> Option<String> {
    CURRENT.try_with(|id| id.clone()).ok()
}

/// A caller's id is kept if it is short, printable ASCII (it ends up in
/// logs and headers); anything else is replaced, not rejected.
fn accept(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?;
    let ok = !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| s.to_string())
}

fn generate() -> String {
    let r = anyaccel_pipeline::request::random_seed;
    format!("{:08x}{:08x}{:08x}{:08x}", r(), r(), r(), r())
}

/// Outermost middleware: the id, the span, and the id on the response.
pub async fn middleware(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(accept)
        .unwrap_or_else(generate);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let span = tracing::info_span!(
        "http_request",
        request_id = %id,
        method = %req.method(),
        route = %route,
        status = tracing::field::Empty,
    );
    let header = HeaderValue::from_str(&id).ok();
    let started = std::time::Instant::now();
    let mut resp = CURRENT
        .scope(id, next.run(req).instrument(span.clone()))
        .await;
    span.record("status", resp.status().as_u16());
    span.in_scope(|| {
        tracing::info!(
            status = resp.status().as_u16(),
            seconds = started.elapsed().as_secs_f64(),
            "request finished"
        )
    });
    if let Some(v) = header {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_ids_are_kept_only_when_printable_and_short() {
        assert_eq!(
            accept(&HeaderValue::from_static("req-42_a.b")),
            Some("req-42_a.b".into())
        );
        assert_eq!(accept(&HeaderValue::from_static("has space")), None);
        assert_eq!(accept(&HeaderValue::from_static("")), None);
        let long = "x".repeat(129);
        assert_eq!(accept(&HeaderValue::from_str(&long).unwrap()), None);
        assert_eq!(generate().len(), 32);
    }
}
