//! Bad configuration fails in `Signer::from_args`, at start-up, with a message
//! that names the file and what is wrong; good configurations sign.

mod common;

use anyaccel_provenance::{Algorithm, C2paArgs, ImageFormat, ProvenanceError, Signer};
use common::{ChainSpec, Files};
use time::{Duration, OffsetDateTime};

fn err(args: &C2paArgs) -> ProvenanceError {
    match Signer::from_args(args) {
        Ok(_) => panic!("expected an error for {args:?}"),
        Err(e) => e,
    }
}

#[test]
fn only_cert_is_an_error() {
    let files = Files::new();
    let chain = common::chain(&ChainSpec::default());
    let args = C2paArgs {
        c2pa_cert: Some(files.write("chain.pem", &chain.chain_pem)),
        ..C2paArgs::default()
    };
    let e = err(&args);
    assert!(matches!(e, ProvenanceError::Incomplete { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("--c2pa-cert") && msg.contains("without --c2pa-key"),
        "{msg}"
    );
}

#[test]
fn only_key_is_an_error() {
    let files = Files::new();
    let chain = common::chain(&ChainSpec::default());
    let args = C2paArgs {
        c2pa_key: Some(files.write("key.pem", &chain.key_pem)),
        ..C2paArgs::default()
    };
    let msg = err(&args).to_string();
    assert!(
        msg.contains("--c2pa-key") && msg.contains("without --c2pa-cert"),
        "{msg}"
    );
}

#[test]
fn unreadable_file_is_named() {
    let files = Files::new();
    let chain = common::chain(&ChainSpec::default());
    let missing = files.dir.path().join("no-such-chain.pem");
    let args = C2paArgs {
        c2pa_cert: Some(missing.clone()),
        c2pa_key: Some(files.write("key.pem", &chain.key_pem)),
        ..C2paArgs::default()
    };
    let e = err(&args);
    assert!(
        matches!(&e, ProvenanceError::Read { path, .. } if *path == missing),
        "{e:?}"
    );
    assert!(e.to_string().contains("no-such-chain.pem"), "{e}");
}

#[test]
fn key_of_another_certificate_does_not_match() {
    let files = Files::new();
    let a = common::chain(&ChainSpec::default());
    let b = common::chain(&ChainSpec::default());
    let args = C2paArgs {
        c2pa_cert: Some(files.write("a.pem", &a.chain_pem)),
        c2pa_key: Some(files.write("b-key.pem", &b.key_pem)),
        ..C2paArgs::default()
    };
    let e = err(&args);
    assert!(matches!(e, ProvenanceError::KeyMismatch { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("key does not match the certificate"), "{msg}");
    assert!(msg.contains("b-key.pem") && msg.contains("a.pem"), "{msg}");
}

#[test]
fn key_of_another_type_does_not_match() {
    let files = Files::new();
    let ec = common::chain(&ChainSpec::default());
    let ed = common::chain(&ChainSpec {
        alg: &rcgen::PKCS_ED25519,
        ..ChainSpec::default()
    });
    let args = C2paArgs {
        c2pa_cert: Some(files.write("ec.pem", &ec.chain_pem)),
        c2pa_key: Some(files.write("ed-key.pem", &ed.key_pem)),
        ..C2paArgs::default()
    };
    let msg = err(&args).to_string();
    assert!(msg.contains("key does not match the certificate"), "{msg}");
    assert!(msg.contains("Ed25519") && msg.contains("P-256"), "{msg}");
}

#[test]
fn expired_certificate_says_when() {
    let files = Files::new();
    let now = OffsetDateTime::now_utc();
    let chain = common::chain(&ChainSpec {
        not_before: now - Duration::days(60),
        not_after: now - Duration::days(2),
        ..ChainSpec::default()
    });
    let e = err(&files.args(&chain));
    assert!(matches!(e, ProvenanceError::Certificate { .. }), "{e:?}");
    let msg = e.to_string();
    let day = (now - Duration::days(2)).date().to_string();
    assert!(msg.contains("chain.pem"), "{msg}");
    assert!(msg.contains(&format!("expired on {day}")), "{msg}");
}

#[test]
fn not_yet_valid_certificate_says_when() {
    let files = Files::new();
    let now = OffsetDateTime::now_utc();
    let chain = common::chain(&ChainSpec {
        not_before: now + Duration::days(3),
        not_after: now + Duration::days(30),
        ..ChainSpec::default()
    });
    let msg = err(&files.args(&chain)).to_string();
    let day = (now + Duration::days(3)).date().to_string();
    assert!(msg.contains(&format!("not valid until {day}")), "{msg}");
}

#[test]
fn certificate_without_extended_key_usage_is_refused() {
    let files = Files::new();
    let chain = common::chain(&ChainSpec {
        eku: false,
        ..ChainSpec::default()
    });
    let msg = err(&files.args(&chain)).to_string();
    assert!(msg.contains("has no extendedKeyUsage"), "{msg}");
    assert!(msg.contains("emailProtection"), "{msg}");
}

#[test]
fn certificate_without_organization_is_refused() {
    let files = Files::new();
    let chain = common::chain(&ChainSpec {
        org: false,
        ..ChainSpec::default()
    });
    let msg = err(&files.args(&chain)).to_string();
    assert!(msg.contains("no organization (O=)"), "{msg}");
}

#[test]
fn ca_first_chain_is_refused() {
    let files = Files::new();
    let chain = common::chain(&ChainSpec::default());
    let args = C2paArgs {
        c2pa_cert: Some(files.write(
            "wrong-order.pem",
            &format!("{}{}", chain.ca_pem, chain.leaf_pem),
        )),
        c2pa_key: Some(files.write("key.pem", &chain.key_pem)),
        ..C2paArgs::default()
    };
    let msg = err(&args).to_string();
    assert!(
        msg.contains("is a CA certificate") && msg.contains("first"),
        "{msg}"
    );
}

#[test]
fn garbage_and_legacy_pem_files_are_explained() {
    let files = Files::new();
    let chain = common::chain(&ChainSpec::default());
    let args = C2paArgs {
        c2pa_cert: Some(files.write("chain.pem", "hello, not a certificate\n")),
        c2pa_key: Some(files.write("key.pem", &chain.key_pem)),
        ..C2paArgs::default()
    };
    let msg = err(&args).to_string();
    assert!(
        msg.contains("chain.pem") && msg.contains("no PEM CERTIFICATE"),
        "{msg}"
    );

    // A key file holding a certificate.
    let args = C2paArgs {
        c2pa_cert: Some(files.write("chain2.pem", &chain.chain_pem)),
        c2pa_key: Some(files.write("cert-as-key.pem", &chain.leaf_pem)),
        ..C2paArgs::default()
    };
    let msg = err(&args).to_string();
    assert!(
        msg.contains("cert-as-key.pem") && msg.contains("not a PRIVATE KEY"),
        "{msg}"
    );

    // A SEC1 ("EC PRIVATE KEY") file: the label is what matters here.
    let sec1 = chain
        .key_pem
        .replace("BEGIN PRIVATE KEY", "BEGIN EC PRIVATE KEY")
        .replace("END PRIVATE KEY", "END EC PRIVATE KEY");
    let args = C2paArgs {
        c2pa_cert: Some(files.write("chain3.pem", &chain.chain_pem)),
        c2pa_key: Some(files.write("sec1.pem", &sec1)),
        ..C2paArgs::default()
    };
    let msg = err(&args).to_string();
    assert!(msg.contains("openssl pkcs8 -topk8 -nocrypt"), "{msg}");
}

#[test]
fn operator_certificates_sign_with_the_algorithm_of_their_key() {
    for (alg, key_pem, want) in [
        (&rcgen::PKCS_ECDSA_P256_SHA256, None, Algorithm::Es256),
        (&rcgen::PKCS_ECDSA_P384_SHA384, None, Algorithm::Es384),
        (&rcgen::PKCS_ED25519, None, Algorithm::Ed25519),
        (
            &rcgen::PKCS_RSA_SHA256,
            Some(common::rsa_key_pem()),
            Algorithm::Ps256,
        ),
    ] {
        let files = Files::new();
        let chain = common::chain(&ChainSpec {
            alg,
            key_pem,
            ..ChainSpec::default()
        });
        let signer = Signer::from_args(&files.args(&chain)).unwrap().unwrap();
        assert_eq!(signer.algorithm(), want);
        assert!(!signer.is_development());
        let d = signer.describe();
        assert_eq!(d["algorithm"], want.to_string());
        assert_eq!(d["development_certificate"], false);
        assert_eq!(
            d["certificate"]["subject"],
            "CN=test signer, O=anyaccel tests"
        );
        assert_eq!(d["certificate"]["issuer"], "CN=test CA");

        let signed = signer
            .sign(&common::png(32), ImageFormat::Png, &common::facts())
            .unwrap();
        let reader = common::read(&signed, ImageFormat::Png);
        assert_eq!(
            reader.validation_state(),
            c2pa::ValidationState::Valid,
            "{want}: {}",
            reader.json()
        );
        let json: serde_json::Value = serde_json::from_str(&reader.json()).unwrap();
        let label = json["active_manifest"].as_str().unwrap();
        let generation = json["manifests"][label]["assertions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["label"] == anyaccel_provenance::GENERATION_ASSERTION)
            .unwrap();
        assert_eq!(
            generation["data"]["development_certificate"], false,
            "{want}"
        );
    }
}
