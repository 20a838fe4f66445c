//! The development certificate: a throwaway CA and an ES256 signing certificate
//! under it, made in memory at start-up.
//!
//! C2PA's certificate profile rejects a self-signed signing certificate and
//! requires keyUsage digitalSignature, an allowed extendedKeyUsage and an
//! authority key identifier, so this is a two-certificate chain. Nothing trusts
//! its CA: verifiers report the signature as valid but the signer as untrusted.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

use crate::ProvenanceError;

/// The C2PA claim-signing extended key usage (1.3.6.1.4.1.62558.2.1).
pub(crate) const C2PA_CLAIM_SIGNING_EKU: &[u64] = &[1, 3, 6, 1, 4, 1, 62558, 2, 1];

pub(crate) struct DevCredentials {
    /// Signing certificate, then the CA.
    pub chain_pem: String,
    /// PKCS#8.
    pub key_pem: String,
}

pub(crate) fn generate() -> Result<DevCredentials, ProvenanceError> {
    let err = |e: rcgen::Error| ProvenanceError::DevCertificate(e.to_string());
    let now = OffsetDateTime::now_utc();
    // Without a timestamp authority, verifiers check the certificate against
    // the time of verification: a long validity keeps development outputs
    // from reading as expired next year.
    let not_before = now - Duration::hours(1);
    let not_after = now + Duration::days(3650);

    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.distinguished_name = name("anyaccel development CA (untrusted)");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca, ca_key);

    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut leaf = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    leaf.distinguished_name = name("anyaccel development signer (untrusted)");
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::EmailProtection,
        ExtendedKeyUsagePurpose::Other(C2PA_CLAIM_SIGNING_EKU.to_vec()),
    ];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(err)?;

    Ok(DevCredentials {
        chain_pem: format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
        key_pem: leaf_key.serialize_pem(),
    })
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "anyaccel development");
    dn
}
