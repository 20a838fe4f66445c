//! The request mix: which generation requests a run sends, and how often.

use crate::BenchError;
use crate::rng::SplitMix64;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const DEFAULT_PROMPT: &str = "a photograph of an astronaut riding a horse";

/// One kind of request in the mix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixEntry {
    /// `WIDTHxHEIGHT`, e.g. `512x512`.
    pub size: String,
    pub steps: u32,
    /// Images per request.
    #[serde(default = "one")]
    pub n: u32,
    /// Relative frequency; entries with weight 0 are never sent.
    #[serde(default = "one_f")]
    pub weight: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_scale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
}

fn one() -> u32 {
    1
}
fn one_f() -> f64 {
    1.0
}

/// A weighted list of request kinds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    pub requests: Vec<MixEntry>,
}

impl Mix {
    pub fn single(entry: MixEntry) -> Self {
        Self {
            requests: vec![entry],
        }
    }

    /// Reads a mix from TOML, or JSON when the file name ends in `.json`.
    pub fn from_file(path: &Path) -> Result<Self, BenchError> {
        let text = std::fs::read_to_string(path).map_err(|source| BenchError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let mix: Mix = if is_json {
            serde_json::from_str(&text).map_err(|e| BenchError::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            })?
        } else {
            toml::from_str(&text).map_err(|e| BenchError::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            })?
        };
        mix.validate().map_err(|message| BenchError::Parse {
            path: path.display().to_string(),
            message,
        })?;
        Ok(mix)
    }

    /// Checks sizes, counts and weights; the message names the entry.
    pub fn validate(&self) -> Result<(), String> {
        if self.requests.is_empty() {
            return Err("the mix has no [[requests]] entries".into());
        }
        let mut total = 0.0;
        for (i, e) in self.requests.iter().enumerate() {
            let at = format!("requests[{i}]");
            parse_size(&e.size).map_err(|m| format!("{at}.size: {m}"))?;
            if e.steps == 0 {
                return Err(format!("{at}.steps must be at least 1"));
            }
            if e.n == 0 {
                return Err(format!("{at}.n must be at least 1"));
            }
            if !(e.weight.is_finite() && e.weight >= 0.0) {
                return Err(format!(
                    "{at}.weight ({}) must be a finite number >= 0",
                    e.weight
                ));
            }
            total += e.weight;
        }
        if total <= 0.0 {
            return Err("all mix weights are 0: nothing would be sent".into());
        }
        Ok(())
    }

    /// Picks an entry index with probability proportional to its weight.
    pub fn pick(&self, rng: &mut SplitMix64) -> usize {
        let total: f64 = self.requests.iter().map(|e| e.weight).sum();
        let mut x = rng.next_f64() * total;
        for (i, e) in self.requests.iter().enumerate() {
            if x < e.weight {
                return i;
            }
            x -= e.weight;
        }
        // Rounding at the top end: the last entry with any weight.
        self.requests
            .iter()
            .rposition(|e| e.weight > 0.0)
            .unwrap_or(0)
    }

    /// Images per request averaged over the mix (for sizing estimates).
    pub fn mean_images(&self) -> f64 {
        let total: f64 = self.requests.iter().map(|e| e.weight).sum();
        if total <= 0.0 {
            return 1.0;
        }
        self.requests
            .iter()
            .map(|e| e.weight * f64::from(e.n))
            .sum::<f64>()
            / total
    }
}

impl MixEntry {
    /// The JSON body of `POST /v1/images/generations` for this entry.
    pub fn body(&self, seed: u64) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert(
            "prompt".into(),
            self.prompt.as_deref().unwrap_or(DEFAULT_PROMPT).into(),
        );
        m.insert("n".into(), self.n.into());
        m.insert("size".into(), self.size.clone().into());
        m.insert("steps".into(), self.steps.into());
        if let Some(g) = self.guidance_scale {
            m.insert("guidance_scale".into(), g.into());
        }
        m.insert("seed".into(), seed.into());
        if let Some(s) = &self.scheduler {
            m.insert("scheduler".into(), s.clone().into());
        }
        m.insert("response_format".into(), "b64_json".into());
        serde_json::Value::Object(m)
    }

    /// Short label for tables, e.g. `512x512/20 steps/n=1`.
    pub fn label(&self) -> String {
        format!("{}/{} steps/n={}", self.size, self.steps, self.n)
    }
}

/// Parses `WIDTHxHEIGHT`.
pub fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{s:?} is not WIDTHxHEIGHT (e.g. 512x512)"))?;
    let w: u32 = w
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: width is not a number"))?;
    let h: u32 = h
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: height is not a number"))?;
    if w == 0 || h == 0 {
        return Err(format!("{s:?}: width and height must be above 0"));
    }
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(size: &str, weight: f64, n: u32) -> MixEntry {
        MixEntry {
            size: size.into(),
            steps: 20,
            n,
            weight,
            prompt: None,
            guidance_scale: None,
            scheduler: None,
        }
    }

    #[test]
    fn parses_toml_and_defaults() {
        let mix: Mix = toml::from_str(
            r#"
            [[requests]]
            size = "512x512"
            steps = 20
            weight = 3

            [[requests]]
            size = "768x768"
            steps = 30
            n = 2
            scheduler = "euler"
            guidance_scale = 7.5
            "#,
        )
        .unwrap();
        mix.validate().unwrap();
        assert_eq!(mix.requests[0].n, 1);
        assert_eq!(mix.requests[1].weight, 1.0);
        assert!((mix.mean_images() - 1.25).abs() < 1e-12);
    }

    #[test]
    fn rejects_bad_entries_with_the_field_named() {
        let m = Mix::single(entry("512", 1.0, 1));
        assert!(m.validate().unwrap_err().contains("requests[0].size"));
        let m = Mix::single(entry("512x512", 0.0, 1));
        assert!(m.validate().unwrap_err().contains("weights are 0"));
        let m = Mix::single(entry("512x512", 1.0, 0));
        assert!(m.validate().unwrap_err().contains("requests[0].n"));
        assert!(Mix { requests: vec![] }.validate().is_err());
    }

    #[test]
    fn pick_follows_weights() {
        let mix = Mix {
            requests: vec![
                entry("512x512", 3.0, 1),
                entry("256x256", 0.0, 1),
                entry("768x768", 1.0, 1),
            ],
        };
        let mut rng = SplitMix64::new(5);
        let mut counts = [0usize; 3];
        for _ in 0..40_000 {
            counts[mix.pick(&mut rng)] += 1;
        }
        assert_eq!(counts[1], 0);
        let share = counts[0] as f64 / 40_000.0;
        assert!((share - 0.75).abs() < 0.01, "{share}");
    }

    #[test]
    fn body_matches_the_api() {
        let mut e = entry("512x512", 1.0, 2);
        e.scheduler = Some("ddim".into());
        let b = e.body(99);
        assert_eq!(b["size"], "512x512");
        assert_eq!(b["n"], 2);
        assert_eq!(b["seed"], 99);
        assert_eq!(b["scheduler"], "ddim");
        assert_eq!(b["response_format"], "b64_json");
        assert!(b.get("guidance_scale").is_none());
    }
}
