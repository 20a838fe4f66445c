//! Loading and checking a certificate chain and its private key, once, at start-up.

use std::fmt;
use std::path::Path;

use c2pa::SigningAlg;
use c2pa::crypto::cose::{CertificateTrustPolicy, check_end_entity_certificate_profile};
use c2pa::crypto::raw_signature::validator_for_signing_alg;
use c2pa::status_tracker::StatusTracker;
use pkcs8::der::asn1::ObjectIdentifier;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::certificate::X509Certificate;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;

use crate::ProvenanceError;

/// The signature algorithm, chosen by the private key's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
    /// ECDSA P-521 with SHA-512.
    Es512,
    /// RSASSA-PSS with SHA-256 (any RSA key of at least 2048 bits).
    Ps256,
    /// EdDSA over Curve25519.
    Ed25519,
}

impl Algorithm {
    fn c2pa(self) -> SigningAlg {
        match self {
            Algorithm::Es256 => SigningAlg::Es256,
            Algorithm::Es384 => SigningAlg::Es384,
            Algorithm::Es512 => SigningAlg::Es512,
            Algorithm::Ps256 => SigningAlg::Ps256,
            Algorithm::Ed25519 => SigningAlg::Ed25519,
        }
    }

    fn key_kind(self) -> &'static str {
        match self {
            Algorithm::Es256 => "an EC P-256 key",
            Algorithm::Es384 => "an EC P-384 key",
            Algorithm::Es512 => "an EC P-521 key",
            Algorithm::Ps256 => "an RSA key",
            Algorithm::Ed25519 => "an Ed25519 key",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
            Algorithm::Es512 => "ES512",
            Algorithm::Ps256 => "PS256",
            Algorithm::Ed25519 => "Ed25519",
        })
    }
}

const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_P521: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_RSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// What `describe()` reports about the signing certificate.
#[derive(Debug, Clone)]
pub(crate) struct CertInfo {
    pub algorithm: Algorithm,
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    pub chain_length: usize,
}

pub(crate) struct Credentials {
    pub signer: c2pa::BoxedSigner,
    pub info: CertInfo,
}

impl Credentials {
    /// Parses and checks a PEM chain (leaf first) and a PKCS#8 PEM key.
    pub fn load(
        cert_pem: &[u8],
        cert_path: &Path,
        key_pem: &[u8],
        key_path: &Path,
    ) -> Result<Credentials, ProvenanceError> {
        let cert_err = |reason: String| ProvenanceError::Certificate {
            path: cert_path.to_path_buf(),
            reason,
        };
        let key_err = |reason: String| ProvenanceError::Key {
            path: key_path.to_path_buf(),
            reason,
        };

        // The chain.
        let mut ders = Vec::new();
        for pem in Pem::iter_from_buffer(cert_pem) {
            let pem = pem.map_err(|e| cert_err(format!("not a valid PEM file ({e})")))?;
            if pem.label == "CERTIFICATE" {
                ders.push(pem.contents);
            } else {
                return Err(cert_err(format!(
                    "holds a PEM \"{}\" block; expected only CERTIFICATE blocks (the signing \
                     certificate first, then any intermediates)",
                    pem.label
                )));
            }
        }
        if ders.is_empty() {
            return Err(cert_err(
                "holds no PEM CERTIFICATE block (expected the signing certificate first, then \
                 any intermediates)"
                    .into(),
            ));
        }
        let now = OffsetDateTime::now_utc();
        let mut certs = Vec::with_capacity(ders.len());
        for (i, der) in ders.iter().enumerate() {
            let which = nth(i);
            let (_, cert) = X509Certificate::from_der(der)
                .map_err(|e| cert_err(format!("{which} is not a valid X.509 certificate ({e})")))?;
            let not_before = to_time(cert.validity().not_before.timestamp());
            let not_after = to_time(cert.validity().not_after.timestamp());
            if now > not_after {
                return Err(cert_err(format!(
                    "{which} ({}) expired on {}",
                    cert.subject(),
                    rfc3339(not_after)
                )));
            }
            if now < not_before {
                return Err(cert_err(format!(
                    "{which} ({}) is not valid until {}",
                    cert.subject(),
                    rfc3339(not_before)
                )));
            }
            certs.push(cert);
        }
        let leaf = &certs[0];
        if leaf.is_ca() {
            return Err(cert_err(format!(
                "the first certificate ({}) is a CA certificate; put the signing (end-entity) \
                 certificate first, then its intermediates",
                leaf.subject()
            )));
        }
        let cert_alg = algorithm_of_certificate(leaf).map_err(cert_err)?;
        check_signing_certificate(leaf).map_err(cert_err)?;

        // The key.
        let mut key_blocks = Vec::new();
        for pem in Pem::iter_from_buffer(key_pem) {
            let pem = pem.map_err(|e| key_err(format!("not a valid PEM file ({e})")))?;
            key_blocks.push(pem);
        }
        let key = match key_blocks.as_slice() {
            [one] => one,
            [] => return Err(key_err("holds no PEM block".into())),
            _ => {
                return Err(key_err(
                    "holds more than one PEM block; expected a single PRIVATE KEY".into(),
                ));
            }
        };
        let key_alg = match key.label.as_str() {
            "PRIVATE KEY" => algorithm_of_key(&key.contents).map_err(key_err)?,
            "ENCRYPTED PRIVATE KEY" => {
                return Err(key_err(
                    "is encrypted; give an unencrypted PKCS#8 key (openssl pkcs8 -topk8 -nocrypt)"
                        .into(),
                ));
            }
            "EC PRIVATE KEY" | "RSA PRIVATE KEY" => {
                return Err(key_err(format!(
                    "is a legacy \"{}\" PEM; convert it to PKCS#8 with \
                     `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8.pem`",
                    key.label
                )));
            }
            other => {
                return Err(key_err(format!(
                    "holds a PEM \"{other}\" block, not a PRIVATE KEY"
                )));
            }
        };
        if key_alg != cert_alg {
            return Err(ProvenanceError::KeyMismatch {
                key: key_path.to_path_buf(),
                cert: cert_path.to_path_buf(),
                detail: format!(
                    " (the key is {}, the certificate's is {})",
                    key_alg.key_kind(),
                    cert_alg.key_kind()
                ),
            });
        }

        // C2PA's own certificate profile (key usage, EKU, AKI, not self-signed, ...):
        // the check the SDK would otherwise fail on at the first signature.
        let mut log = StatusTracker::default();
        if let Err(e) = check_end_entity_certificate_profile(
            &ders[0],
            &CertificateTrustPolicy::default(),
            &mut log,
            None,
        ) {
            let why: Vec<String> = log
                .logged_items()
                .iter()
                .map(|item| item.description.to_string())
                .collect();
            let why = if why.is_empty() {
                e.to_string()
            } else {
                why.join("; ")
            };
            return Err(cert_err(format!(
                "the signing certificate does not meet the C2PA certificate profile: {why} \
                 (it needs keyUsage digitalSignature, an extendedKeyUsage such as \
                 emailProtection, documentSigning or the C2PA claim-signing purpose \
                 1.3.6.1.4.1.62558.2.1, an authority key identifier, and must not be a CA)"
            )));
        }

        let signer = c2pa::create_signer::from_keys(cert_pem, key_pem, key_alg.c2pa(), None)
            .map_err(|e| key_err(format!("cannot be used for {key_alg} signing ({e})")))?;

        // Does the key belong to the certificate? Sign a probe and verify it
        // with the certificate's public key.
        let probe = b"anyaccel C2PA key check";
        let sig = signer
            .sign(probe)
            .map_err(|e| key_err(format!("cannot sign with it ({e})")))?;
        let validator = validator_for_signing_alg(key_alg.c2pa())
            .ok_or_else(|| key_err(format!("{key_alg} verification is not available")))?;
        if validator
            .validate(&sig, probe, leaf.public_key().raw)
            .is_err()
        {
            return Err(ProvenanceError::KeyMismatch {
                key: key_path.to_path_buf(),
                cert: cert_path.to_path_buf(),
                detail: String::new(),
            });
        }

        // The SDK reserves room for a 10 kB timestamp-authority token that is
        // never fetched here (no TSA, no network): reserve what the signature
        // box needs (certificates, signature, COSE headers) and save ~9 kB per image.
        let chain_len: usize = ders.iter().map(Vec::len).sum();
        let signer: c2pa::BoxedSigner = Box::new(NoTimestamp {
            inner: signer,
            reserve: chain_len + SIGNATURE_BOX_OVERHEAD,
        });

        let info = CertInfo {
            algorithm: key_alg,
            subject: leaf.subject().to_string(),
            issuer: leaf.issuer().to_string(),
            serial: leaf.raw_serial_as_string(),
            not_before: rfc3339(to_time(leaf.validity().not_before.timestamp())),
            not_after: rfc3339(to_time(leaf.validity().not_after.timestamp())),
            chain_length: certs.len(),
        };
        Ok(Credentials { signer, info })
    }
}

/// What C2PA requires of the signing certificate that is worth saying plainly
/// (the SDK's own profile check, run afterwards, only says "params incorrect").
fn check_signing_certificate(leaf: &X509Certificate<'_>) -> Result<(), String> {
    let subject = leaf.subject();
    match leaf.key_usage() {
        Ok(Some(ku)) if ku.value.digital_signature() => {}
        Ok(_) => {
            return Err(format!(
                "the signing certificate ({subject}) lacks keyUsage digitalSignature, which C2PA \
                 requires"
            ));
        }
        Err(e) => {
            return Err(format!(
                "the signing certificate's keyUsage is invalid ({e})"
            ));
        }
    }
    match leaf.extended_key_usage() {
        Ok(Some(eku)) if eku.value.any => {
            return Err(format!(
                "the signing certificate ({subject}) has the anyExtendedKeyUsage purpose, which \
                 C2PA forbids; {EKU_HINT}"
            ));
        }
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(format!(
                "the signing certificate ({subject}) has no extendedKeyUsage; {EKU_HINT}"
            ));
        }
        Err(e) => {
            return Err(format!(
                "the signing certificate's extendedKeyUsage is invalid ({e})"
            ));
        }
    }
    // c2pa-rs reports the signer by the subject's organization and fails
    // validation ("claimSignature.mismatch") of a signature whose certificate has none.
    if subject.iter_organization().next().is_none() {
        return Err(format!(
            "the signing certificate's subject ({subject}) has no organization (O=) attribute; \
             C2PA verifiers name the signer by it and reject signatures without one"
        ));
    }
    Ok(())
}

const EKU_HINT: &str = "C2PA needs emailProtection (1.3.6.1.5.5.7.3.4), documentSigning \
                        (1.3.6.1.5.5.7.3.36) or the C2PA claim-signing purpose \
                        (1.3.6.1.4.1.62558.2.1)";

/// Room in the signature box beyond the certificates: the signature itself
/// (at most 512 bytes, RSA-4096) and the COSE structure around it. The SDK
/// allows 1024; twice that leaves margin.
const SIGNATURE_BOX_OVERHEAD: usize = 2048;

/// The SDK's signer, without room for a timestamp token it never gets.
struct NoTimestamp {
    inner: c2pa::BoxedSigner,
    reserve: usize,
}

impl c2pa::Signer for NoTimestamp {
    fn sign(&self, data: &[u8]) -> c2pa::Result<Vec<u8>> {
        self.inner.sign(data)
    }

    fn alg(&self) -> SigningAlg {
        self.inner.alg()
    }

    fn certs(&self) -> c2pa::Result<Vec<Vec<u8>>> {
        self.inner.certs()
    }

    fn reserve_size(&self) -> usize {
        self.reserve
    }
}

fn nth(i: usize) -> String {
    if i == 0 {
        "the signing certificate".to_string()
    } else {
        format!("certificate {} of the chain", i + 1)
    }
}

fn to_time(ts: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(ts).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn unsupported(what: &str) -> String {
    format!(
        "{what} is not supported for C2PA signing (supported: EC P-256, P-384 or P-521 for \
         ES256/ES384/ES512, RSA for PS256, Ed25519)"
    )
}

fn algorithm_of_key(pkcs8_der: &[u8]) -> Result<Algorithm, String> {
    let info = pkcs8::PrivateKeyInfo::try_from(pkcs8_der)
        .map_err(|e| format!("is not a valid PKCS#8 private key ({e})"))?;
    let oid = info.algorithm.oid;
    let curve = info.algorithm.parameters_oid().ok();
    algorithm_of(oid, curve).map_err(|what| unsupported(&format!("the key type ({what})")))
}

fn algorithm_of_certificate(cert: &X509Certificate<'_>) -> Result<Algorithm, String> {
    let spki = cert.public_key();
    let oid = ObjectIdentifier::from_bytes(spki.algorithm.algorithm.as_bytes())
        .map_err(|e| format!("has an unreadable public key algorithm ({e})"))?;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .and_then(|o| ObjectIdentifier::from_bytes(o.as_bytes()).ok());
    algorithm_of(oid, curve).map_err(|what| unsupported(&format!("its public key type ({what})")))
}

fn algorithm_of(
    oid: ObjectIdentifier,
    curve: Option<ObjectIdentifier>,
) -> Result<Algorithm, String> {
    match oid {
        OID_EC_PUBLIC_KEY => match curve {
            Some(OID_P256) => Ok(Algorithm::Es256),
            Some(OID_P384) => Ok(Algorithm::Es384),
            Some(OID_P521) => Ok(Algorithm::Es512),
            Some(other) => Err(format!("EC curve {other}")),
            None => Err("EC key without a named curve".into()),
        },
        OID_RSA | OID_RSA_PSS => Ok(Algorithm::Ps256),
        OID_ED25519 => Ok(Algorithm::Ed25519),
        other => Err(format!("algorithm {other}")),
    }
}
