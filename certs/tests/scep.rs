//! SCEP messages captured from real clients (vectors in `tests/vectors/scep`).

use mdm_certs::scep::{ContentCipher, Digest, MessageType, PkiMessage, ServerIdentity, VerifyOptions, subject_text};
use mdm_certs::{PKey, TrustAnchors, X509};

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/scep").join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn micromdm_scepclient_pkcs_req() {
    let ra = X509::from_pem(&vector("ra.pem")).unwrap();
    let ra_key = PKey::private_key_from_pem(&vector("ra-key.pem")).unwrap();
    let anchors = TrustAnchors::new(vec![X509::from_pem(&vector("ca.pem")).unwrap()]);
    let der = vector("scepclient-2.1.0-pkcsreq-des.der");
    let server = ServerIdentity { cert: &ra, key: &ra_key };

    let msg = PkiMessage::decode(&der).expect("decodes");
    assert_eq!(msg.message_type, MessageType::PKCS_REQ);
    assert_eq!(msg.sender_nonce.len(), 16);
    assert!(!msg.transaction_id.is_empty());

    // Single DES is refused (badAlg) unless allowed.
    let opts = VerifyOptions { allow_des: false, renewal_anchors: &anchors, now: 1_800_000_000 };
    let refused = PkiMessage::decode(&der).unwrap().verify(server, &opts).expect_err("DES not allowed");
    assert_eq!(refused.error.reason(), "unsupported_content_cipher");

    let Ok(_legacy) = openssl::provider::Provider::try_load(None, "legacy", true) else {
        eprintln!("skipped the DES part: openssl legacy provider not available");
        return;
    };
    let opts = VerifyOptions { allow_des: true, ..opts };
    let req = msg.verify(server, &opts).expect("verifies");
    assert_eq!(req.csr.challenge.as_deref(), Some("3hDTasU4TKvTjpibAYKPxCWi1DrpTwQL3wFtBmk1dzw"));
    assert_eq!(subject_text(&req.csr.subject), "C=US,O=scep-client,OU=MDM,CN=peer");
    assert_eq!(req.reply.digest, Digest::Sha1, "answered with the requester's digest");
    assert_eq!(req.reply.cipher, ContentCipher::DesEde3Cbc, "single DES is answered with triple DES");
    assert_eq!(subject_text(req.signer.subject_name()), "O=scep-client,CN=SCEP SIGNER");
}
