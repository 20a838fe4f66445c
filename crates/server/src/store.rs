//! Short-lived server-side storage: images behind `response_format=url`
//! links, and the output encoding each async job asked for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyaccel_pipeline::images::OutputFormat;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;
use crate::error::ApiError;

/// How a job's images are encoded when fetched.
#[derive(Debug, Clone, Copy)]
pub struct Encoding {
    pub format: OutputFormat,
    pub quality: Option<u8>,
}

struct File {
    bytes: Arc<Vec<u8>>,
    format: OutputFormat,
    expires: Instant,
}

#[derive(Clone)]
pub struct ImageStore {
    ttl: Duration,
    files: Arc<Mutex<HashMap<String, File>>>,
    encodings: Arc<Mutex<HashMap<String, (Encoding, Instant)>>>,
}

impl ImageStore {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            files: Arc::default(),
            encodings: Arc::default(),
        }
    }

    /// Stores an image; returns its file name (`<random>.<ext>`).
    pub fn put(&self, bytes: Vec<u8>, format: OutputFormat) -> String {
        let now = Instant::now();
        let id = format!(
            "{:016x}{:016x}.{}",
            anyaccel_pipeline::request::random_seed() << 32
                | anyaccel_pipeline::request::random_seed(),
            anyaccel_pipeline::request::random_seed(),
            format.extension()
        );
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files.retain(|_, f| f.expires > now);
        files.insert(
            id.clone(),
            File {
                bytes: Arc::new(bytes),
                format,
                expires: now + self.ttl,
            },
        );
        id
    }

    fn get(&self, id: &str) -> Option<(Arc<Vec<u8>>, OutputFormat)> {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files
            .get(id)
            .filter(|f| f.expires > Instant::now())
            .map(|f| (f.bytes.clone(), f.format))
    }

    pub fn set_encoding(&self, job: &str, enc: Encoding) {
        let now = Instant::now();
        let mut map = self.encodings.lock().unwrap_or_else(|p| p.into_inner());
        // Entries outlive their job by at most one TTL.
        map.retain(|_, (_, t)| now.duration_since(*t) < self.ttl * 4);
        map.insert(job.to_string(), (enc, now));
    }

    pub fn encoding_of(&self, job: &str) -> Option<Encoding> {
        let map = self.encodings.lock().unwrap_or_else(|p| p.into_inner());
        map.get(job).map(|(e, _)| *e)
    }
}

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/images/files/{id}", get(file))
}

/// An image behind a `response_format=url` link, until its TTL ends.
async fn file(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let (bytes, format) = state.store.get(&id).ok_or_else(|| {
        ApiError::not_found(format!("no image {id} (links expire after the result TTL)"))
    })?;
    let mut resp = bytes.as_ref().clone().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.mime()),
    );
    Ok(resp)
}
