//! CLIP's tokenizer, matching transformers' `CLIPTokenizer` (without ftfy,
//! which diffusers installs do not pull in): text cleanup, lower-casing, CJK
//! splitting and CLIP's word regex here, then the byte-level BPE of the
//! `tokenizers` crate with CLIP's `</w>` end-of-word marker.

use std::path::Path;

use regex::Regex;
use serde_json::Value;
use tokenizers::Model;
use tokenizers::models::bpe::BPE;

use super::{Encoded, TokenizerError, read_json, token_content};

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

pub struct ClipTokenizer {
    bpe: BPE,
    word: Regex,
    byte_chars: [char; 256],
    bos: i64,
    eos: i64,
    pad: i64,
    pad_text: String,
    max_len: usize,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("max_len", &self.max_len)
            .field("pad", &self.pad)
            .finish()
    }
}

impl ClipTokenizer {
    /// Loads `vocab.json`, `merges.txt` and, if present, `tokenizer_config.json`
    /// and `special_tokens_map.json` from a model's `tokenizer/` folder.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let vocab = dir.join("vocab.json");
        let merges = dir.join("merges.txt");
        for f in [&vocab, &merges] {
            if !f.is_file() {
                return Err(TokenizerError::File {
                    path: f.clone(),
                    message: "missing; expected the CLIP tokenizer's BPE files (vocab.json and merges.txt)".into(),
                });
            }
        }
        let mut pad = None;
        let mut max_len = 77;
        for name in ["special_tokens_map.json", "tokenizer_config.json"] {
            let path = dir.join(name);
            if !path.is_file() {
                continue;
            }
            let json = read_json(&path)?;
            if let Some(p) = json.get("pad_token").and_then(token_content) {
                pad = Some(p);
            }
            if let Some(n) = json.get("model_max_length").and_then(Value::as_u64) {
                // transformers writes a huge sentinel when unset.
                if n < 10_000 {
                    max_len = n as usize;
                }
            }
        }
        Self::from_files(&vocab, &merges, pad.as_deref(), max_len)
    }

    /// Builds from CLIP BPE files; `pad` defaults to the end-of-text token (SD 1.x).
    pub fn from_files(
        vocab: &Path,
        merges: &Path,
        pad: Option<&str>,
        max_len: usize,
    ) -> Result<Self, TokenizerError> {
        let file_err = |path: &Path, message: String| TokenizerError::File {
            path: path.to_path_buf(),
            message,
        };
        let vocab_s = vocab
            .to_str()
            .ok_or_else(|| file_err(vocab, "path is not UTF-8".into()))?;
        let merges_s = merges
            .to_str()
            .ok_or_else(|| file_err(merges, "path is not UTF-8".into()))?;
        let bpe = BPE::from_file(vocab_s, merges_s)
            .end_of_word_suffix("</w>".into())
            .unk_token(EOS.into())
            .build()
            .map_err(|e| {
                file_err(
                    vocab,
                    format!("not a valid BPE vocabulary with its merges: {e}"),
                )
            })?;
        if max_len < 2 {
            return Err(TokenizerError::Invalid(format!(
                "model_max_length {max_len} is too small"
            )));
        }
        let id = |tok: &str| -> Result<i64, TokenizerError> {
            bpe.token_to_id(tok)
                .map(i64::from)
                .ok_or_else(|| file_err(vocab, format!("has no `{tok}` token")))
        };
        let bos = id(BOS)?;
        let eos = id(EOS)?;
        let pad_text = pad.unwrap_or(EOS).to_string();
        let pad = id(&pad_text)?;
        let word = Regex::new(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")
            .map_err(|e| TokenizerError::Invalid(e.to_string()))?;
        Ok(Self {
            bpe,
            word,
            byte_chars: byte_chars(),
            bos,
            eos,
            pad,
            pad_text,
            max_len,
        })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Tokenizes and pads one prompt to `max_len` ids: BOS, tokens, EOS, padding.
    pub fn encode(&self, text: &str) -> Result<Encoded, TokenizerError> {
        let mut ids = vec![self.bos];
        let body = self.tokens(text)?;
        let room = self.max_len - 2;
        let truncated = body.len() > room;
        ids.extend(body.into_iter().take(room));
        ids.push(self.eos);
        ids.resize(self.max_len, self.pad);
        Ok(Encoded { ids, truncated })
    }

    /// The BPE ids of `text`, without BOS/EOS or padding.
    ///
    /// Like transformers, special tokens (BOS, EOS and a distinct pad token
    /// such as SD 2.x's `!`) are split out of the raw text before cleanup,
    /// so `wow!!!` yields three pad ids there.
    pub fn tokens(&self, text: &str) -> Result<Vec<i64>, TokenizerError> {
        let mut specials: Vec<(&str, i64)> = vec![(BOS, self.bos), (EOS, self.eos)];
        if self.pad != self.eos && self.pad != self.bos {
            specials.push((self.pad_text.as_str(), self.pad));
        }
        let mut out = Vec::new();
        let mut rest = text;
        loop {
            let next = specials
                .iter()
                .filter_map(|&(s, id)| rest.find(s).map(|at| (at, s.len(), id)))
                .min_by_key(|&(at, len, _)| (at, std::cmp::Reverse(len)));
            let Some((at, len, id)) = next else {
                self.words(rest, &mut out)?;
                break;
            };
            self.words(&rest[..at], &mut out)?;
            out.push(id);
            rest = &rest[at + len..];
        }
        Ok(out)
    }

    fn words(&self, text: &str, out: &mut Vec<i64>) -> Result<(), TokenizerError> {
        let clean = clean_text(text);
        for m in self.word.find_iter(&clean) {
            let encoded: String = m
                .as_str()
                .bytes()
                .map(|b| self.byte_chars[b as usize])
                .collect();
            let toks = self
                .bpe
                .tokenize(&encoded)
                .map_err(|e| TokenizerError::Invalid(e.to_string()))?;
            out.extend(toks.into_iter().map(|t| i64::from(t.id)));
        }
        Ok(())
    }
}

/// GPT-2/CLIP's reversible map from bytes to printable characters.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    for b in 0..256u32 {
        let c = if printable(b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        table[b as usize] = char::from_u32(c).unwrap_or('?');
    }
    table
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

/// Unicode "Other" categories (Cc, Cf, Cs, Co, Cn) that transformers' BasicTokenizer drops.
fn is_other(c: char) -> bool {
    use unicode_general_category::{GeneralCategory as G, get_general_category};
    matches!(
        get_general_category(c),
        G::Control | G::Format | G::Surrogate | G::PrivateUse | G::Unassigned
    )
}

/// What `CLIPTokenizer` does before its regex when ftfy is absent: drop
/// control characters, map whitespace to spaces, pad CJK ideographs with
/// spaces, NFC-normalise, lower-case, and collapse runs of whitespace.
fn clean_text(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\0' || c == '\u{FFFD}' {
            continue;
        }
        if c == ' '
            || c == '\t'
            || c == '\n'
            || c == '\r'
            || c.is_whitespace() && is_space_separator(c)
        {
            s.push(' ');
        } else if is_other(c) {
            continue;
        } else if is_cjk(c) {
            s.push(' ');
            s.push(c);
            s.push(' ');
        } else {
            s.push(c);
        }
    }
    let nfc: String = s.nfc().collect();
    nfc.split_whitespace()
        .map(|w| w.to_lowercase())
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_space_separator(c: char) -> bool {
    use unicode_general_category::{GeneralCategory as G, get_general_category};
    get_general_category(c) == G::SpaceSeparator
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_permutation_of_printables() {
        let t = byte_chars();
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], 'Ġ');
        let mut all: Vec<char> = t.to_vec();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 256);
    }

    #[test]
    fn cleanup_lowercases_and_splits_cjk() {
        assert_eq!(clean_text("  Hello\tWORLD\n"), "hello world");
        assert_eq!(clean_text("東京a"), "東 京 a");
        assert_eq!(clean_text("a\u{200b}b"), "ab");
    }
}
