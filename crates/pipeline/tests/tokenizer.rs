//! Our CLIP tokenizer against transformers' `CLIPTokenizer` on the real
//! 49,408-token CLIP vocabulary, derived from CLIP's own BPE file.

mod common;

use std::collections::BTreeMap;
use std::io::Read;

use anyaccel_pipeline::tokenizer::ClipTokenizer;
use common::{fixtures, read_json};

/// Writes vocab.json and merges.txt the way CLIP builds them from
/// `bpe_simple_vocab_16e6.txt.gz`: 256 byte characters, the same with `</w>`,
/// one token per merge, then the two special tokens.
fn derive_clip_files(dir: &std::path::Path) {
    let gz = std::fs::read(fixtures().join("clip/bpe_simple_vocab_16e6.txt.gz")).unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .unwrap();
    let merges: Vec<&str> = text.split('\n').skip(1).take(49152 - 256 - 2).collect();
    let bytes = byte_chars();
    let mut vocab: Vec<String> = bytes.iter().map(|c| c.to_string()).collect();
    vocab.extend(bytes.iter().map(|c| format!("{c}</w>")));
    vocab.extend(merges.iter().map(|m| m.replace(' ', "")));
    vocab.push("<|startoftext|>".into());
    vocab.push("<|endoftext|>".into());
    let map: BTreeMap<&str, usize> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    std::fs::write(dir.join("vocab.json"), serde_json::to_string(&map).unwrap()).unwrap();
    std::fs::write(
        dir.join("merges.txt"),
        format!("#version: 0.2\n{}\n", merges.join("\n")),
    )
    .unwrap();
}

fn byte_chars() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut ordered: Vec<u32> = (0..256).filter(|&b| printable(b)).collect();
    let mut extra = 0;
    let mut chars: Vec<u32> = ordered.clone();
    for b in 0..256 {
        if !printable(b) {
            ordered.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    chars
        .into_iter()
        .map(|c| char::from_u32(c).unwrap())
        .collect()
}

#[test]
fn matches_transformers_clip_tokenizer_on_the_full_vocabulary() {
    let dir = std::env::temp_dir().join(format!("anyaccel-clip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    derive_clip_files(&dir);
    let eos_pad =
        ClipTokenizer::from_files(&dir.join("vocab.json"), &dir.join("merges.txt"), None, 77)
            .unwrap();
    let bang_pad = ClipTokenizer::from_files(
        &dir.join("vocab.json"),
        &dir.join("merges.txt"),
        Some("!"),
        77,
    )
    .unwrap();
    let r = read_json("reference/tokenizer.json");
    let cases = r["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let expected: Vec<i64> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let tok = if case["pad"] == "!" {
            &bang_pad
        } else {
            &eos_pad
        };
        let got = tok.encode(prompt).unwrap();
        if got.ids != expected {
            failures.push(format!(
                "{prompt:?}\n  ours:         {:?}\n  transformers: {:?}",
                got.ids, expected
            ));
        }
        assert_eq!(
            got.truncated,
            case["truncated"].as_bool().unwrap(),
            "{prompt:?} truncation flag"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        failures.is_empty(),
        "{} of {} prompts differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn tiny_model_tokenizer_loads_from_its_folder() {
    let tok = ClipTokenizer::from_dir(&fixtures().join("models/tiny-sd2v/tokenizer")).unwrap();
    let enc = tok.encode("a horse").unwrap();
    assert_eq!(enc.ids.len(), 77);
    assert_eq!(*enc.ids.last().unwrap(), 0, "SD 2.x pads with `!` (id 0)");
}
