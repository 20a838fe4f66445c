//! T5's tokenizer (SD3's `tokenizer_3`, Flux's `tokenizer_2`): the
//! SentencePiece unigram model that transformers' `T5TokenizerFast` saves
//! as `tokenizer.json`, run by the `tokenizers` crate, then `</s>` and
//! padding to the chosen sequence length.

use std::path::Path;

use serde_json::Value;
use tokenizers::Tokenizer;

use super::{Encoded, TokenizerError, read_json, token_content};

pub struct T5Tokenizer {
    inner: Tokenizer,
    eos: i64,
    pad: i64,
    max_len: usize,
}

impl std::fmt::Debug for T5Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("T5Tokenizer")
            .field("max_len", &self.max_len)
            .finish()
    }
}

impl T5Tokenizer {
    /// Loads `tokenizer.json` and, if present, `tokenizer_config.json` (for
    /// `model_max_length`) from a model's tokenizer folder.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let file_err = |message: String| TokenizerError::File {
            path: path.clone(),
            message,
        };
        let mut inner = Tokenizer::from_file(&path)
            .map_err(|e| file_err(format!("not a tokenizers JSON file: {e}")))?;
        // Special tokens are added below, after truncation, as transformers does.
        inner.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
        inner
            .with_truncation(None)
            .map_err(|e| file_err(e.to_string()))?;
        inner.with_padding(None);
        let mut eos_text = "</s>".to_string();
        let mut pad_text = "<pad>".to_string();
        let mut max_len = 512;
        for name in ["special_tokens_map.json", "tokenizer_config.json"] {
            let p = dir.join(name);
            if !p.is_file() {
                continue;
            }
            let json = read_json(&p)?;
            if let Some(t) = json.get("eos_token").and_then(token_content) {
                eos_text = t;
            }
            if let Some(t) = json.get("pad_token").and_then(token_content) {
                pad_text = t;
            }
            if let Some(n) = json.get("model_max_length").and_then(Value::as_u64)
                && n < 100_000
            {
                max_len = n as usize;
            }
        }
        let id = |tok: &str| {
            inner
                .token_to_id(tok)
                .map(i64::from)
                .ok_or_else(|| file_err(format!("has no `{tok}` token")))
        };
        Ok(Self {
            eos: id(&eos_text)?,
            pad: id(&pad_text)?,
            inner,
            max_len,
        })
    }

    /// The longest sequence the tokenizer allows (`model_max_length`).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Tokens, cut to `len - 1`, then `</s>`, then padding to `len`.
    pub fn encode(&self, text: &str, len: usize) -> Result<Encoded, TokenizerError> {
        if len < 2 || len > self.max_len {
            return Err(TokenizerError::Invalid(format!(
                "T5 sequence length must be between 2 and {} (got {len})",
                self.max_len
            )));
        }
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Invalid(e.to_string()))?;
        let body = enc.get_ids();
        let room = len - 1;
        let mut ids: Vec<i64> = body.iter().take(room).map(|&i| i64::from(i)).collect();
        ids.push(self.eos);
        ids.resize(len, self.pad);
        Ok(Encoded {
            ids,
            truncated: body.len() > room,
        })
    }
}
