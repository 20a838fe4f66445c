//! Shared test helpers: small images and certificates made with the same
//! tooling the crate uses (rcgen), written to a temporary folder.
#![allow(dead_code)]

use std::io::Cursor;
use std::path::PathBuf;

use anyaccel_provenance::{C2paArgs, ImageFacts, ImageFormat};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SignatureAlgorithm,
};
use time::{Duration, OffsetDateTime};

/// The A1111 `parameters` text every test PNG carries.
pub const PARAMETERS: &str =
    "a lighthouse at dusk\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 64x64";

pub fn gradient(side: u32) -> image::RgbImage {
    image::RgbImage::from_fn(side, side, |x, y| {
        image::Rgb([
            (x * 255 / side.max(1)) as u8,
            (y * 255 / side.max(1)) as u8,
            ((x + y) * 127 / side.max(1)) as u8,
        ])
    })
}

/// A PNG with a `parameters` tEXt chunk, as anyaccel's pipeline writes it.
pub fn png(side: u32) -> Vec<u8> {
    let img = gradient(side);
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side, side);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .add_text_chunk("parameters".into(), PARAMETERS.into())
        .unwrap();
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(img.as_raw()).unwrap();
    writer.finish().unwrap();
    out
}

pub fn jpeg(side: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90);
    gradient(side).write_with_encoder(enc).unwrap();
    out
}

pub fn webp(side: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let enc = image::codecs::webp::WebPEncoder::new_lossless(&mut out);
    gradient(side).write_with_encoder(enc).unwrap();
    out
}

pub fn image(format: ImageFormat, side: u32) -> Vec<u8> {
    match format {
        ImageFormat::Png => png(side),
        ImageFormat::Jpeg => jpeg(side),
        ImageFormat::Webp => webp(side),
    }
}

/// Reads the PNG `parameters` text chunk.
pub fn png_parameters(bytes: &[u8]) -> Option<String> {
    let reader = png::Decoder::new(Cursor::new(bytes)).read_info().ok()?;
    let info = reader.info();
    info.uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .map(|t| t.text.clone())
}

pub fn facts() -> ImageFacts {
    ImageFacts {
        software_version: "0.1.0-test".into(),
        model_id: "fixtures/models/tiny-sd15".into(),
        model_hash: "sha256:0123456789abcdef".into(),
        prompt: Some("a lighthouse at dusk".into()),
        negative_prompt: Some("blurry".into()),
        seed: Some(42),
    }
}

/// How to make a test chain.
pub struct ChainSpec {
    pub alg: &'static SignatureAlgorithm,
    /// A PKCS#8 PEM key to certify instead of generating one (RSA: ring cannot
    /// generate RSA keys).
    pub key_pem: Option<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub eku: bool,
    /// Put an organization (O=) in the signing certificate's subject.
    pub org: bool,
}

impl Default for ChainSpec {
    fn default() -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            alg: &rcgen::PKCS_ECDSA_P256_SHA256,
            key_pem: None,
            not_before: now - Duration::days(1),
            not_after: now + Duration::days(30),
            eku: true,
            org: true,
        }
    }
}

pub struct Chain {
    /// Leaf then CA.
    pub chain_pem: String,
    pub leaf_pem: String,
    pub ca_pem: String,
    pub key_pem: String,
}

pub fn chain(spec: &ChainSpec) -> Chain {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name = dn("test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let key = match &spec.key_pem {
        Some(pem) => KeyPair::from_pem_and_sign_algo(pem, spec.alg).unwrap(),
        None => KeyPair::generate_for(spec.alg).unwrap(),
    };
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.distinguished_name = dn("test signer");
    if spec.org {
        leaf.distinguished_name
            .push(DnType::OrganizationName, "anyaccel tests");
    }
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if spec.eku {
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::EmailProtection];
    }
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = spec.not_before;
    leaf.not_after = spec.not_after;
    let leaf_cert = leaf.signed_by(&key, &issuer).unwrap();
    Chain {
        chain_pem: format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
        leaf_pem: leaf_cert.pem(),
        ca_pem: ca_cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Writes `files` into a fresh temporary folder.
pub struct Files {
    pub dir: tempfile::TempDir,
}

impl Files {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
    pub fn args(&self, chain: &Chain) -> C2paArgs {
        C2paArgs {
            c2pa_cert: Some(self.write("chain.pem", &chain.chain_pem)),
            c2pa_key: Some(self.write("key.pem", &chain.key_pem)),
            ..C2paArgs::default()
        }
    }
}

/// Reads a signed image with the c2pa crate's own Reader (no trust anchors,
/// no network).
pub fn read(bytes: &[u8], format: ImageFormat) -> c2pa::Reader {
    let ctx = c2pa::Context::new()
        .with_settings(serde_json::json!({
            "verify": {"remote_manifest_fetch": false, "ocsp_fetch": false}
        }))
        .unwrap()
        .into_shared();
    c2pa::Reader::from_shared_context(&ctx)
        .with_stream(format.mime(), Cursor::new(bytes))
        .unwrap()
}

/// Flips one byte inside the image data (PNG IDAT, JPEG entropy-coded scan,
/// WebP VP8L/VP8 payload), leaving the file's structure and the manifest alone.
pub fn tamper(bytes: &[u8], format: ImageFormat) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let at = match format {
        ImageFormat::Png => find(&out, b"IDAT") + 4 + 16,
        ImageFormat::Webp => {
            let chunk = find_opt(&out, b"VP8L").unwrap_or_else(|| find(&out, b"VP8 "));
            chunk + 8 + 24
        }
        ImageFormat::Jpeg => {
            // Inside the scan, away from markers: before the EOI, a byte whose
            // flip cannot make a 0xFF marker prefix.
            let sos = find(&out, &[0xFF, 0xDA]);
            (sos + 64..out.len() - 16)
                .rev()
                .find(|&i| out[i] < 0xFE && out[i - 1] != 0xFF && out[i + 1] != 0xFF)
                .expect("a scan byte to flip")
        }
    };
    out[at] ^= 0x01;
    out
}

fn find_opt(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    find_opt(hay, needle).unwrap_or_else(|| panic!("{needle:?} not found"))
}

/// A fresh RSA-2048 private key, PKCS#8 PEM.
pub fn rsa_key_pem() -> String {
    use rsa::pkcs8::EncodePrivateKey;
    let mut rng = rsa::rand_core::OsRng;
    let key = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
    key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
        .unwrap()
        .to_string()
}
