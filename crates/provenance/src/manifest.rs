//! The manifest written into every image.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::{GENERATION_ASSERTION, ImageFacts, ProvenanceError, TRAINED_ALGORITHMIC_MEDIA};

/// The SDK context every signature uses: explicit settings (nothing read from
/// the environment or the SDK's thread-local settings), no thumbnails, no
/// network, no verification after signing.
pub(crate) fn context() -> Result<Arc<c2pa::Context>, ProvenanceError> {
    c2pa::Context::new()
        .with_settings(json!({
            "builder": {
                "thumbnail": { "enabled": false },
                "auto_timestamp_assertion": { "enabled": false },
            },
            "verify": {
                "verify_after_sign": false,
                "verify_after_sign_hash": false,
                "remote_manifest_fetch": false,
                "ocsp_fetch": false,
            },
        }))
        .map(c2pa::Context::into_shared)
        .map_err(|e| ProvenanceError::Setup(format!("settings rejected: {e}")))
}

/// The manifest definition (c2pa's JSON manifest definition format).
pub(crate) fn definition(facts: &ImageFacts, development: bool, include_prompt: bool) -> Value {
    let agent = json!({ "name": "anyaccel", "version": facts.software_version });
    let mut generation = Map::new();
    generation.insert("model_id".into(), json!(facts.model_id));
    generation.insert("model_hash".into(), json!(facts.model_hash));
    generation.insert("prompt_included".into(), json!(include_prompt));
    if include_prompt {
        if let Some(p) = &facts.prompt {
            generation.insert("prompt".into(), json!(p));
        }
        if let Some(p) = &facts.negative_prompt {
            generation.insert("negative_prompt".into(), json!(p));
        }
        if let Some(s) = facts.seed {
            generation.insert("seed".into(), json!(s));
        }
    }
    generation.insert("development_certificate".into(), json!(development));

    let mut created = json!({
        "action": "c2pa.created",
        "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
        "softwareAgent": agent,
    });
    if let Ok(when) = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
    {
        created["when"] = json!(when);
    }
    json!({
        "claim_generator_info": [agent],
        "assertions": [
            { "label": "c2pa.actions", "data": { "actions": [created] } },
            { "label": GENERATION_ASSERTION, "data": generation },
        ],
    })
}
