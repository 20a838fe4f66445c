//! Prompt tokenizers, each matching its transformers counterpart id for id:
//! CLIP's BPE (every family) and T5's SentencePiece unigram (SD3, Flux).

use std::path::{Path, PathBuf};

use serde_json::Value;

mod clip;
mod t5;

pub use clip::ClipTokenizer;
pub use t5::T5Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Invalid(String),
}

/// Token ids of one prompt, padded to the text encoder's context length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<i64>,
    /// Whether the prompt was longer than the context and got cut.
    pub truncated: bool,
}

/// The tokenizer of one text encoder.
#[derive(Debug)]
pub enum PromptTokenizer {
    Clip(ClipTokenizer),
    T5(T5Tokenizer),
}

impl PromptTokenizer {
    /// Loads a model's tokenizer folder: T5 when it holds SentencePiece's
    /// `tokenizer.json` without CLIP's `merges.txt`, else CLIP.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        if !dir.join("merges.txt").is_file() && dir.join("tokenizer.json").is_file() {
            T5Tokenizer::from_dir(dir).map(Self::T5)
        } else {
            ClipTokenizer::from_dir(dir).map(Self::Clip)
        }
    }

    /// The longest sequence the encoder takes (CLIP's context is also the
    /// only length it is padded to).
    pub fn max_len(&self) -> usize {
        match self {
            PromptTokenizer::Clip(t) => t.max_len(),
            PromptTokenizer::T5(t) => t.max_len(),
        }
    }

    /// Whether the padded length can be chosen (T5's `max_sequence_length`).
    pub fn is_t5(&self) -> bool {
        matches!(self, PromptTokenizer::T5(_))
    }

    /// Ids of `text` padded (or truncated) to `len` tokens; CLIP only takes
    /// its own context length.
    pub fn encode(&self, text: &str, len: usize) -> Result<Encoded, TokenizerError> {
        match self {
            PromptTokenizer::Clip(t) if len == t.max_len() => t.encode(text),
            PromptTokenizer::Clip(t) => Err(TokenizerError::Invalid(format!(
                "CLIP encodes exactly {} tokens, not {len}",
                t.max_len()
            ))),
            PromptTokenizer::T5(t) => t.encode(text, len),
        }
    }
}

fn read_json(path: &Path) -> Result<Value, TokenizerError> {
    let text = std::fs::read_to_string(path).map_err(|e| TokenizerError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| TokenizerError::File {
        path: path.to_path_buf(),
        message: format!("invalid JSON: {e}"),
    })
}

/// A special token given as a string or as `{"content": ...}`.
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}
