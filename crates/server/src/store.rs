//! Images behind `response_format=url` links. The batcher keeps them, with
//! retained job results, within the result TTL and memory budget.

use anyaccel_batcher::Lookup;
use anyaccel_pipeline::images::OutputFormat;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;
use crate::error::ApiError;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/images/files/{id}", get(file))
}

/// An image behind a `response_format=url` link, until its TTL ends or the
/// result memory budget needs its room.
async fn file(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let file = match state.batcher.file(&id) {
        Lookup::Found(f) => f,
        Lookup::Gone => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "expired",
                format!("image {id} expired (links last for the result TTL)"),
            ));
        }
        Lookup::NotFound => return shared_file(&state, &id).await,
    };
    let mut resp = file.bytes.as_ref().clone().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(file.format.mime()),
    );
    Ok(resp)
}

/// An image another replica kept, through the shared queue.
async fn shared_file(state: &AppState, id: &str) -> Result<Response, ApiError> {
    let format = id.rsplit_once('.').and_then(|(_, ext)| {
        [OutputFormat::Png, OutputFormat::Jpeg, OutputFormat::Webp]
            .into_iter()
            .find(|f| f.extension() == ext)
    });
    let (Some(queue), Some(format)) = (&state.queue, format) else {
        return Err(ApiError::not_found(format!("no image {id}")));
    };
    match queue.file(id).await? {
        Some(bytes) => {
            let mut resp = bytes.into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.mime()),
            );
            Ok(resp)
        }
        None => Err(ApiError::not_found(format!("no image {id}"))),
    }
}
