//! C2PA Content Credentials for the images anyaccel returns.
//!
//! Every PNG, JPEG or WebP that anyaccel hands back can carry a signed
//! [C2PA](https://c2pa.org) manifest saying that it was *created* by a trained
//! algorithm (IPTC `trainedAlgorithmicMedia`) with anyaccel, which model made it
//! and, when the operator allows it, the prompt and seed. Verifiers (c2patool,
//! c2pa-python, the Content Credentials site, browsers) read it back and detect
//! any change to the pixels.
//!
//! # Use
//!
//! ```no_run
//! use anyaccel_provenance::{C2paArgs, ImageFacts, ImageFormat, Signer};
//!
//! # fn demo(args: &C2paArgs, png: Vec<u8>) -> Result<(), anyaccel_provenance::ProvenanceError> {
//! // At start-up (bad certificates or keys fail here, never per request):
//! let signer: Option<Signer> = Signer::from_args(args)?; // None with --c2pa off
//!
//! // Per image, on a blocking thread (signing is synchronous CPU work):
//! let facts = ImageFacts {
//!     software_version: env!("CARGO_PKG_VERSION").to_string(),
//!     model_id: "onnx-community/stable-diffusion-v1-5-ONNX".into(),
//!     model_hash: "sha256:…".into(),
//!     prompt: Some("a lighthouse at dusk".into()),
//!     negative_prompt: None,
//!     seed: Some(42),
//! };
//! let out = match &signer {
//!     Some(s) => s.sign(&png, ImageFormat::Png, &facts)?,
//!     None => png,
//! };
//! # let _ = out; Ok(()) }
//! ```
//!
//! [`Signer`] is `Send + Sync`: build it once, share it (e.g. in an `Arc`)
//! across request threads. See `docs/provenance.md` for the manifest contents,
//! the development certificate and how to verify an output.

mod cert;
mod dev;
mod manifest;

use std::fmt;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};

pub use cert::Algorithm;

/// The label of anyaccel's own assertion in the manifest (model, hash, and the
/// prompt when allowed).
pub const GENERATION_ASSERTION: &str = "ai.anyaccel.generation";

/// The IPTC digital source type every anyaccel image is declared with.
pub const TRAINED_ALGORITHMIC_MEDIA: &str =
    "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia";

/// Command-line flags (and environment variables) for Content Credentials.
///
/// Flatten it into a command: `#[command(flatten)] c2pa: C2paArgs`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct C2paArgs {
    /// Sign every returned image with a C2PA manifest (Content Credentials).
    #[arg(
        long = "c2pa",
        env = "ANYACCEL_C2PA",
        value_enum,
        default_value_t = C2paMode::On,
        value_name = "on|off"
    )]
    pub c2pa: C2paMode,

    /// PEM certificate chain to sign with, signing (end-entity) certificate
    /// first. Needs --c2pa-key. Without both, a development certificate is
    /// generated at start-up (verifiers report it as untrusted).
    #[arg(long = "c2pa-cert", env = "ANYACCEL_C2PA_CERT", value_name = "FILE")]
    pub c2pa_cert: Option<PathBuf>,

    /// PEM (PKCS#8) private key of the signing certificate. Needs --c2pa-cert.
    #[arg(long = "c2pa-key", env = "ANYACCEL_C2PA_KEY", value_name = "FILE")]
    pub c2pa_key: Option<PathBuf>,

    /// Also record the prompt, negative prompt and seed in the manifest (off by
    /// default: prompts can be private).
    #[arg(
        long = "c2pa-include-prompt",
        env = "ANYACCEL_C2PA_INCLUDE_PROMPT",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub c2pa_include_prompt: bool,
}

impl Default for C2paArgs {
    /// On, with a development certificate, without prompts.
    fn default() -> Self {
        Self {
            c2pa: C2paMode::On,
            c2pa_cert: None,
            c2pa_key: None,
            c2pa_include_prompt: false,
        }
    }
}

/// `--c2pa on|off`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum C2paMode {
    /// Sign every image.
    #[default]
    On,
    /// Return images unsigned.
    Off,
}

/// The image formats that can be signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    Png,
    Jpeg,
    Webp,
}

impl ImageFormat {
    /// The MIME type (`image/png`, `image/jpeg`, `image/webp`).
    pub fn mime(self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Webp => "image/webp",
        }
    }

    /// Every format [`Signer::sign`] accepts.
    pub const ALL: [ImageFormat; 3] = [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Webp];
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageFormat::Png => "PNG",
            ImageFormat::Jpeg => "JPEG",
            ImageFormat::Webp => "WebP",
        })
    }
}

/// What the manifest says about one generated image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageFacts {
    /// anyaccel's version (e.g. `env!("CARGO_PKG_VERSION")` of the binary):
    /// written as the claim generator's and the `c2pa.created` action's
    /// software agent version.
    pub software_version: String,
    /// The model as the operator named it (Hub repo id or folder).
    pub model_id: String,
    /// The model's hash as anyaccel reports it elsewhere (e.g. `/info`).
    pub model_hash: String,
    /// The prompt; written only with `--c2pa-include-prompt`.
    pub prompt: Option<String>,
    /// The negative prompt; written only with `--c2pa-include-prompt`.
    pub negative_prompt: Option<String>,
    /// The seed; written only with `--c2pa-include-prompt`.
    pub seed: Option<u64>,
}

/// Why Content Credentials could not be set up, or an image not signed.
#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    /// Only one of `--c2pa-cert` / `--c2pa-key` was given.
    #[error(
        "{given} was given without {missing}: give both (certificate chain and its private key), \
         or neither for a development certificate"
    )]
    Incomplete {
        given: &'static str,
        missing: &'static str,
    },
    /// A certificate or key file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The certificate chain is unusable (malformed, expired, not yet valid,
    /// not acceptable to C2PA).
    #[error("C2PA certificate {}: {reason}", path.display())]
    Certificate { path: PathBuf, reason: String },
    /// The private key is unusable (malformed, encrypted, unsupported type).
    #[error("C2PA key {}: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    /// The private key is not the certificate's.
    #[error(
        "C2PA key {}: key does not match the certificate in {}{detail}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        key: PathBuf,
        cert: PathBuf,
        /// Empty, or `" (…)"` saying how they differ.
        detail: String,
    },
    /// The development certificate could not be generated.
    #[error("cannot generate the C2PA development certificate: {0}")]
    DevCertificate(String),
    /// The C2PA SDK refused its settings (a bug, not configuration).
    #[error("cannot set up C2PA signing: {0}")]
    Setup(String),
    /// Signing one image failed (e.g. the bytes are not a valid image of that format).
    #[error("C2PA signing of a {format} image failed: {message}")]
    Sign {
        format: ImageFormat,
        message: String,
    },
}

/// Signs images with a C2PA manifest. Build once at start-up with
/// [`Signer::from_args`]; `Send + Sync`, so share it across threads.
pub struct Signer {
    signer: c2pa::BoxedSigner,
    context: Arc<c2pa::Context>,
    info: cert::CertInfo,
    development: bool,
    include_prompt: bool,
}

impl Signer {
    /// Sets signing up from the flags.
    ///
    /// * `--c2pa off`: `Ok(None)`.
    /// * `--c2pa-cert` and `--c2pa-key`: loads both and checks, now, that the
    ///   key is the certificate's, that every certificate in the chain is
    ///   within its validity period, that the algorithm is one C2PA signs with
    ///   (ES256/ES384/ES512 from an EC P-256/P-384/P-521 key, PS256 from an RSA
    ///   key, Ed25519), and that the signing certificate meets C2PA's
    ///   certificate profile (key usage, extended key usage, not a CA, ...).
    /// * Neither: generates a development CA and signing certificate (ES256) in
    ///   memory; [`Signer::is_development`] is then true and every manifest
    ///   says so.
    /// * Only one of them: an error.
    pub fn from_args(args: &C2paArgs) -> Result<Option<Signer>, ProvenanceError> {
        if args.c2pa == C2paMode::Off {
            return Ok(None);
        }
        let (creds, development) = match (&args.c2pa_cert, &args.c2pa_key) {
            (Some(cert_path), Some(key_path)) => {
                let cert_pem = read(cert_path)?;
                let key_pem = read(key_path)?;
                (
                    cert::Credentials::load(&cert_pem, cert_path, &key_pem, key_path)?,
                    false,
                )
            }
            (Some(_), None) => {
                return Err(ProvenanceError::Incomplete {
                    given: "--c2pa-cert (ANYACCEL_C2PA_CERT)",
                    missing: "--c2pa-key (ANYACCEL_C2PA_KEY)",
                });
            }
            (None, Some(_)) => {
                return Err(ProvenanceError::Incomplete {
                    given: "--c2pa-key (ANYACCEL_C2PA_KEY)",
                    missing: "--c2pa-cert (ANYACCEL_C2PA_CERT)",
                });
            }
            (None, None) => {
                let dev = dev::generate()?;
                let label = PathBuf::from("<development certificate>");
                (
                    cert::Credentials::load(
                        dev.chain_pem.as_bytes(),
                        &label,
                        dev.key_pem.as_bytes(),
                        &label,
                    )?,
                    true,
                )
            }
        };
        Ok(Some(Signer {
            signer: creds.signer,
            context: manifest::context()?,
            info: creds.info,
            development,
            include_prompt: args.c2pa_include_prompt,
        }))
    }

    /// Returns `image` with a signed C2PA manifest embedded (PNG: a `caBX`
    /// chunk; JPEG: APP11 segments; WebP: a `C2PA` RIFF chunk). Everything else
    /// in the file, such as the PNG `parameters` text chunk, is kept.
    ///
    /// Synchronous and CPU-bound (1–3 ms for a 512×512 image, docs/benchmarks.md):
    /// call it from a blocking thread in async code.
    pub fn sign(
        &self,
        image: &[u8],
        format: ImageFormat,
        facts: &ImageFacts,
    ) -> Result<Vec<u8>, ProvenanceError> {
        let fail = |e: &dyn fmt::Display| ProvenanceError::Sign {
            format,
            message: e.to_string(),
        };
        let definition = manifest::definition(facts, self.development, self.include_prompt);
        let mut builder = c2pa::Builder::from_shared_context(&self.context)
            .with_definition(definition)
            .map_err(|e| fail(&e))?;
        let mut source = Cursor::new(image);
        let mut dest = Cursor::new(Vec::with_capacity(image.len() + 32 * 1024));
        builder
            .sign(self.signer.as_ref(), format.mime(), &mut source, &mut dest)
            .map_err(|e| fail(&e))?;
        Ok(dest.into_inner())
    }

    /// Whether this signs with the generated development certificate (which
    /// verifiers report as untrusted).
    pub fn is_development(&self) -> bool {
        self.development
    }

    /// Whether prompts, negative prompts and seeds are written.
    pub fn includes_prompt(&self) -> bool {
        self.include_prompt
    }

    /// The signing algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.info.algorithm
    }

    /// A summary for `/info`:
    ///
    /// ```json
    /// {"enabled": true, "algorithm": "ES256", "development_certificate": true,
    ///  "include_prompt": false, "formats": ["image/png", "image/jpeg", "image/webp"],
    ///  "certificate": {"subject": "CN=…", "issuer": "CN=…", "serial": "…",
    ///                  "not_before": "2026-…Z", "not_after": "2036-…Z", "chain_length": 2}}
    /// ```
    pub fn describe(&self) -> Value {
        json!({
            "enabled": true,
            "algorithm": self.info.algorithm.to_string(),
            "development_certificate": self.development,
            "include_prompt": self.include_prompt,
            "formats": ImageFormat::ALL.iter().map(|f| f.mime()).collect::<Vec<_>>(),
            "certificate": {
                "subject": self.info.subject,
                "issuer": self.info.issuer,
                "serial": self.info.serial,
                "not_before": self.info.not_before,
                "not_after": self.info.not_after,
                "chain_length": self.info.chain_length,
            },
        })
    }

    /// What `/info` should show when [`Signer::from_args`] returned `None`.
    pub fn describe_disabled() -> Value {
        json!({ "enabled": false })
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("algorithm", &self.info.algorithm)
            .field("subject", &self.info.subject)
            .field("not_after", &self.info.not_after)
            .field("development", &self.development)
            .field("include_prompt", &self.include_prompt)
            .finish_non_exhaustive()
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, ProvenanceError> {
    std::fs::read(path).map_err(|source| ProvenanceError::Read {
        path: path.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn signer_is_send_and_sync() {
        assert_send_sync::<Signer>();
        assert_send_sync::<ProvenanceError>();
    }

    #[test]
    fn off_gives_none() {
        let args = C2paArgs {
            c2pa: C2paMode::Off,
            ..C2paArgs::default()
        };
        assert!(Signer::from_args(&args).unwrap().is_none());
    }

    #[test]
    fn development_signer_describes_itself() {
        let signer = Signer::from_args(&C2paArgs::default()).unwrap().unwrap();
        assert!(signer.is_development());
        let d = signer.describe();
        assert_eq!(d["enabled"], true);
        assert_eq!(d["algorithm"], "ES256");
        assert_eq!(d["development_certificate"], true);
        assert_eq!(d["include_prompt"], false);
        assert_eq!(d["certificate"]["chain_length"], 2);
        let subject = d["certificate"]["subject"].as_str().unwrap();
        assert!(subject.contains("development"), "{subject}");
        assert_ne!(d["certificate"]["subject"], d["certificate"]["issuer"]);
        assert!(
            d["certificate"]["not_after"]
                .as_str()
                .unwrap()
                .ends_with('Z')
        );
    }

    #[test]
    fn flags_and_env_parse() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            c2pa: C2paArgs,
        }
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.c2pa, C2paArgs::default());
        let cli = Cli::try_parse_from([
            "x",
            "--c2pa",
            "off",
            "--c2pa-cert",
            "c.pem",
            "--c2pa-key",
            "k.pem",
            "--c2pa-include-prompt",
        ])
        .unwrap();
        assert_eq!(cli.c2pa.c2pa, C2paMode::Off);
        assert_eq!(cli.c2pa.c2pa_cert, Some(PathBuf::from("c.pem")));
        assert_eq!(cli.c2pa.c2pa_key, Some(PathBuf::from("k.pem")));
        assert!(cli.c2pa.c2pa_include_prompt);
        assert!(Cli::try_parse_from(["x", "--c2pa", "maybe"]).is_err());
    }
}
