//! The playground: one self-contained page at `/` (inline CSS and JS, no
//! external assets, no build step) that drives the native jobs API, so a
//! person can try prompts on whatever accelerator this replica runs.
//! See docs/playground.md.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::AppState;

/// The page, embedded in the binary.
const PAGE: &str = include_str!("playground/index.html");

/// Everything the page loads is inline or from this origin; the policy makes
/// sure it stays that way (no CDN can sneak in) and that it is not framed.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
img-src 'self' data: blob:; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new().route("/", get(page))
}

async fn page() -> Response {
    let mut resp = Html(PAGE).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The page is small and changes with the binary: always revalidate.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use super::PAGE;

    #[test]
    fn page_is_self_contained() {
        assert!(PAGE.starts_with("<!doctype html>"));
        for external in [
            "http://",
            "https://",
            "//cdn",
            "<script src",
            "<link rel=\"stylesheet\"",
        ] {
            assert!(
                !PAGE.contains(external),
                "page references an external asset: {external}"
            );
        }
    }
}
