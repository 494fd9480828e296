//! Every encode and decode path and every refusal reason, on messages built here (client side)
//! and read back (server side), plus hand-altered messages for the checks a well-behaved client
//! never trips.

use cms::content_info::ContentInfo;
use cms::enveloped_data::{EnvelopedData, RecipientInfo};
use cms::signed_data::SignedData;
use der::{Any, Decode, Encode};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::{X509, X509Name};

use super::*;
use crate::TrustAnchors;
use crate::devpki::{self, LeafProfile, Usage};

const NOW: i64 = 1_750_000_000;
const NONCE: [u8; 16] = *b"client-nonce-16b";
const SERVER_NONCE: [u8; 16] = *b"server-nonce-16b";
const TID: &str = "c0ffee00transaction";

fn secret() -> EnvelopeSecret {
    EnvelopeSecret(core::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11)))
}

fn serial(n: u8) -> [u8; 16] {
    devpki::serial_from_random([n; 16])
}

/// The gateway's side: an EC CA and an RSA RA it issued.
struct Pki {
    ca: X509,
    ca_key: PKey<Private>,
    ra: X509,
    ra_key: PKey<Private>,
    anchors: TrustAnchors,
}

fn rsa(bits: u32) -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(bits).expect("rsa")).expect("pkey")
}

fn ec(nid: Nid) -> PKey<Private> {
    PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(nid).expect("group")).expect("ec")).expect("pkey")
}

fn pki() -> Pki {
    let ca_key = devpki::generate_key().expect("key");
    let ca = devpki::create_ca(&ca_key, "Test CA", NOW, 3650, &serial(1)).expect("ca");
    let ra_key = rsa(2048);
    let profile = LeafProfile {
        common_name: Some("Test SCEP RA"),
        names: &[],
        usage: Usage::Unrestricted,
        not_before: NOW - 3600,
        not_after: NOW + 86_400 * 365,
        serial: &serial(2),
    };
    let ra = devpki::issue_leaf_certificate(&ca, &ca_key, &ra_key, &profile).expect("ra");
    Pki { anchors: TrustAnchors::new(vec![ca.clone()]), ca, ca_key, ra, ra_key }
}

impl Pki {
    fn server(&self) -> ServerIdentity<'_> {
        ServerIdentity { cert: &self.ra, key: &self.ra_key }
    }

    fn opts(&self, now: i64) -> VerifyOptions<'_> {
        VerifyOptions { allow_des: false, renewal_anchors: &self.anchors, now }
    }

    fn verify(&self, der: &[u8]) -> Result<CertRequest, Refused> {
        PkiMessage::decode(der).expect("decodes").verify(self.server(), &self.opts(NOW))
    }

    fn issue(&self, csr: &CsrInfo) -> X509 {
        devpki::issue_certificate_for_request(
            &self.ca,
            &self.ca_key,
            &csr.subject,
            &csr.public_key,
            NOW - 60,
            NOW + 86_400 * 365,
            &serial(9),
        )
        .expect("issue")
    }
}

fn subject(cn: &str) -> X509Name {
    let mut b = X509Name::builder().expect("name");
    b.append_entry_by_nid(Nid::COMMONNAME, cn).expect("cn");
    b.append_entry_by_nid(Nid::ORGANIZATIONNAME, "Example Org").expect("o");
    b.build()
}

/// A device: its key, the CSR and the self-signed certificate its PKCSReq is signed with.
struct Device {
    key: PKey<Private>,
    csr: Vec<u8>,
    self_signed: X509,
}

fn device_with(key: PKey<Private>, challenge: Option<&str>) -> Device {
    let name = subject("device-0001");
    let csr = build_csr(&key, &name, challenge).expect("csr");
    let self_signed = self_signed_certificate(&key, &name, NOW - 60, NOW + 3600, &serial(3)).expect("self-signed");
    Device { key, csr, self_signed }
}

fn device(challenge: Option<&str>) -> Device {
    device_with(rsa(2048), challenge)
}

fn request(pki: &Pki, d: &Device, message_type: MessageType, cipher: ContentCipher) -> Vec<u8> {
    build_request(&ClientRequest {
        message_type,
        csr_der: &d.csr,
        signer_cert: &d.self_signed,
        signer_key: &d.key,
        recipient: &pki.ra,
        transaction_id: TID,
        sender_nonce: &NONCE,
        cipher,
        digest: Digest::Sha256,
        secret: &secret(),
    })
    .expect("request")
}

fn pkcs_req(pki: &Pki, d: &Device) -> Vec<u8> {
    request(pki, d, MessageType::PKCS_REQ, ContentCipher::Aes128Cbc)
}

fn refused(pki: &Pki, der: &[u8]) -> Refused {
    match pki.verify(der) {
        Ok(r) => panic!("expected a refusal, got {r:?}"),
        Err(r) => r,
    }
}

fn parse(pki: &Pki, d: &Device, reply: &[u8]) -> Result<CertRep, ScepError> {
    parse_cert_rep(reply, &pki.ra, TID, &NONCE, &d.self_signed, &d.key, Some(&d.key))
}

// ---- Round trips ----------------------------------------------------------------------------

#[test]
fn pkcs_req_round_trip_issues_the_csr_subject_and_key() {
    let pki = pki();
    let d = device(Some("one-time-secret"));
    let msg = PkiMessage::decode(&pkcs_req(&pki, &d)).expect("decode");
    assert_eq!(msg.message_type, MessageType::PKCS_REQ);
    assert_eq!(msg.transaction_id, TID);
    assert_eq!(msg.sender_nonce, NONCE);
    let req = msg.verify(pki.server(), &pki.opts(NOW)).expect("verify");
    assert_eq!(req.csr.challenge.as_deref(), Some("one-time-secret"));
    assert_eq!(subject_text(&req.csr.subject), "CN=device-0001,O=Example Org");
    assert!(req.csr.public_key.public_eq(&d.key));
    assert_eq!(req.reply.cipher, ContentCipher::Aes128Cbc);
    assert_eq!(req.reply.digest, Digest::Sha256);
    assert_eq!(req.reply.recipient_nonce, NONCE);

    let issued = pki.issue(&req.csr);
    let reply = req.reply.success(pki.server(), &issued, &SERVER_NONCE, &secret()).expect("success");
    let rep = parse(&pki, &d, &reply).expect("parse");
    assert_eq!(rep.status, PkiStatus::SUCCESS);
    assert_eq!(rep.fail_info, None);
    assert_eq!(rep.transaction_id, TID);
    assert_eq!(rep.recipient_nonce, NONCE);
    assert_eq!(rep.sender_nonce, SERVER_NONCE);
    assert_eq!(rep.certificates.len(), 1);
    assert_eq!(rep.certificates[0].to_der().expect("der"), issued.to_der().expect("der"));
    assert_eq!(rep.cipher, Some(ContentCipher::Aes128Cbc));
    // The issued certificate is a device identity under the CA.
    crate::verify_device_certificate(&rep.certificates[0], &[], &pki.anchors, NOW).expect("chains");
}

#[test]
fn every_content_cipher_round_trips_and_is_echoed() {
    let pki = pki();
    let d = device(Some("x"));
    for cipher in
        [ContentCipher::Aes128Cbc, ContentCipher::Aes192Cbc, ContentCipher::Aes256Cbc, ContentCipher::DesEde3Cbc]
    {
        let req = pki.verify(&request(&pki, &d, MessageType::PKCS_REQ, cipher)).expect("verify");
        assert_eq!(req.reply.cipher, cipher);
        let issued = pki.issue(&req.csr);
        let reply = req.reply.success(pki.server(), &issued, &SERVER_NONCE, &secret()).expect("success");
        let rep = parse(&pki, &d, &reply).expect("parse");
        assert_eq!(rep.cipher, Some(cipher), "{cipher:?}");
    }
}

/// Single DES: refused as badAlg unless allowed; when allowed (and openssl's legacy provider is
/// loaded) decrypted and answered with triple DES.
#[test]
fn single_des_only_when_allowed() {
    let pki = pki();
    let d = device(Some("x"));
    let Ok(_legacy) = openssl::provider::Provider::try_load(None, "legacy", true) else {
        eprintln!("skipped: openssl legacy provider not available");
        return;
    };
    let der = request(&pki, &d, MessageType::PKCS_REQ, ContentCipher::DesCbc);
    let r = refused(&pki, &der);
    assert!(matches!(r.error, ScepError::UnsupportedContentCipher(_)), "{:?}", r.error);
    assert_eq!(r.fail_info(), FailInfo::BAD_ALG);
    let opts = VerifyOptions { allow_des: true, ..pki.opts(NOW) };
    let req = PkiMessage::decode(&der).expect("decode").verify(pki.server(), &opts).expect("verify");
    assert_eq!(req.reply.cipher, ContentCipher::DesEde3Cbc);
}

/// EC requesters sign fine, but no reply can be encrypted to them: badAlg before anything else.
#[test]
fn ec_requester_is_bad_alg_and_sha512_works() {
    let pki = pki();
    let d = device_with(ec(Nid::X9_62_PRIME256V1), Some("x"));
    let r = refused(&pki, &pkcs_req(&pki, &d));
    assert!(matches!(r.error, ScepError::RequesterKeyNotRsa), "{:?}", r.error);
    assert_eq!(r.fail_info(), FailInfo::BAD_ALG);
    // The failure reply itself needs no encryption.
    r.reply.failure(pki.server(), r.fail_info(), &SERVER_NONCE).expect("failure");

    let d = device(Some("x"));
    let der = build_request(&ClientRequest {
        message_type: MessageType::PKCS_REQ,
        csr_der: &d.csr,
        signer_cert: &d.self_signed,
        signer_key: &d.key,
        recipient: &pki.ra,
        transaction_id: TID,
        sender_nonce: &NONCE,
        cipher: ContentCipher::Aes256Cbc,
        digest: Digest::Sha512,
        secret: &secret(),
    })
    .expect("request");
    let req = pki.verify(&der).expect("verify");
    assert_eq!(req.reply.digest, Digest::Sha512);
    let issued = pki.issue(&req.csr);
    let reply = req.reply.success(pki.server(), &issued, &SERVER_NONCE, &secret()).expect("success");
    assert_eq!(parse(&pki, &d, &reply).expect("parse").status, PkiStatus::SUCCESS);
}

#[test]
fn failure_and_pending_replies_carry_status_and_no_content() {
    let pki = pki();
    let d = device(Some("x"));
    let msg = PkiMessage::decode(&pkcs_req(&pki, &d)).expect("decode");
    let reply_to = msg.reply_to();
    for fi in [
        FailInfo::BAD_ALG,
        FailInfo::BAD_MESSAGE_CHECK,
        FailInfo::BAD_REQUEST,
        FailInfo::BAD_TIME,
        FailInfo::BAD_CERT_ID,
    ] {
        let der = reply_to.failure(pki.server(), fi, &SERVER_NONCE).expect("failure");
        let rep = parse(&pki, &d, &der).expect("parse");
        assert_eq!((rep.status, rep.fail_info), (PkiStatus::FAILURE, Some(fi)));
        assert!(rep.certificates.is_empty());
        assert_eq!(rep.recipient_nonce, NONCE);
        let sd = outer(&der);
        assert!(sd.encap_content_info.econtent.is_none(), "FAILURE has no pkcsPKIEnvelope");
    }
    let der = reply_to.pending(pki.server(), &SERVER_NONCE).expect("pending");
    let rep = parse(&pki, &d, &der).expect("parse");
    assert_eq!((rep.status, rep.fail_info), (PkiStatus::PENDING, None));
}

#[test]
fn renewal_req_signed_by_an_issued_certificate() {
    let pki = pki();
    let old_key = rsa(2048);
    let old = devpki::issue_device_certificate(
        &pki.ca,
        &pki.ca_key,
        &old_key,
        "device-0001",
        NOW - 60,
        NOW + 3600,
        &serial(5),
    )
    .expect("old cert");
    // The renewed certificate may have another kind of key (EC here): the reply is encrypted to
    // the old certificate.
    let new = device_with(ec(Nid::X9_62_PRIME256V1), None);
    let der = build_request(&ClientRequest {
        message_type: MessageType::RENEWAL_REQ,
        csr_der: &new.csr,
        signer_cert: &old,
        signer_key: &old_key,
        recipient: &pki.ra,
        transaction_id: TID,
        sender_nonce: &NONCE,
        cipher: ContentCipher::Aes128Cbc,
        digest: Digest::Sha256,
        secret: &secret(),
    })
    .expect("request");
    let req = pki.verify(&der).expect("verify");
    assert_eq!(req.message_type, MessageType::RENEWAL_REQ);
    assert_eq!(req.signer.to_der().expect("der"), old.to_der().expect("der"));
    assert_eq!(req.csr.challenge, None);
    // The reply is encrypted to the old certificate, which the device still holds.
    let issued = pki.issue(&req.csr);
    let reply = req.reply.success(pki.server(), &issued, &SERVER_NONCE, &secret()).expect("success");
    let rep = parse_cert_rep(&reply, &pki.ra, TID, &NONCE, &old, &old_key, Some(&new.key)).expect("parse");
    assert!(rep.certificates[0].public_key().expect("key").public_eq(&new.key));

    // Expired: badTime. From another CA: badCertId. Self-signed: badCertId.
    let r = PkiMessage::decode(&der).expect("decode").verify(pki.server(), &pki.opts(NOW + 7200)).expect_err("expired");
    assert!(matches!(r.error, ScepError::RenewalCertNotValid(_)), "{:?}", r.error);
    assert_eq!(r.fail_info(), FailInfo::BAD_TIME);
    let other = pki_other_ca_cert(&old_key);
    let self_signed = device(None);
    for signer in [other, self_signed.self_signed.clone()] {
        let key = if signer.public_key().expect("k").public_eq(&old_key) { &old_key } else { &self_signed.key };
        let der = build_request(&ClientRequest {
            message_type: MessageType::RENEWAL_REQ,
            csr_der: &new.csr,
            signer_cert: &signer,
            signer_key: key,
            recipient: &pki.ra,
            transaction_id: TID,
            sender_nonce: &NONCE,
            cipher: ContentCipher::Aes128Cbc,
            digest: Digest::Sha256,
            secret: &secret(),
        })
        .expect("request");
        let r = refused(&pki, &der);
        assert!(matches!(r.error, ScepError::RenewalCertNotOurs(_)), "{:?}", r.error);
        assert_eq!(r.fail_info(), FailInfo::BAD_CERT_ID);
    }
}

fn pki_other_ca_cert(key: &PKey<Private>) -> X509 {
    let other_key = devpki::generate_key().expect("key");
    let other = devpki::create_ca(&other_key, "Other CA", NOW, 30, &serial(7)).expect("ca");
    devpki::issue_device_certificate(&other, &other_key, key, "device-0001", NOW - 60, NOW + 3600, &serial(8))
        .expect("cert")
}

#[test]
fn certs_only_round_trip() {
    let pki = pki();
    let der = certs_only(&[pki.ra.clone(), pki.ca.clone()]).expect("encode");
    let mut got: Vec<Vec<u8>> =
        parse_certs_only(&der).expect("parse").iter().map(|c| c.to_der().expect("der")).collect();
    let mut want = vec![pki.ra.to_der().expect("der"), pki.ca.to_der().expect("der")];
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // openssl reads it as a PKCS#7 SignedData too.
    let p7 = openssl::pkcs7::Pkcs7::from_der(&der).expect("openssl parses");
    assert_eq!(p7.signed().and_then(|s| s.certificates()).map(|c| c.len()), Some(2));
}

#[test]
fn challenge_password_encodings() {
    let pki = pki();
    for challenge in [Some("plain-printable"), Some("ünïcødé_and_underscore"), None] {
        let d = device(challenge);
        let req = pki.verify(&pkcs_req(&pki, &d)).expect("verify");
        assert_eq!(req.csr.challenge.as_deref(), challenge);
    }
    assert!(matches!(build_csr(&rsa(2048), &subject("x"), Some("")), Err(ScepError::InvalidInput(_))));
}

// ---- Not a PKI message (no failInfo: the transport answers) --------------------------------

#[test]
fn garbage_and_non_scep_cms_have_no_fail_info() {
    let pki = pki();
    let d = device(Some("x"));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"definitely not DER".to_vec(), "not_cms"),
        (Vec::new(), "not_cms"),
        (certs_only(std::slice::from_ref(&pki.ca)).expect("degenerate"), "signer_count"),
        (envelope::encrypt(b"x", &pki.ra, ContentCipher::Aes128Cbc, &secret()).expect("env"), "not_signed_data"),
        // A signed message without SCEP attributes (an Mdm-Signature, say).
        (
            signed::sign(Some(b"body"), Vec::new(), &d.self_signed, &d.key, &[], Digest::Sha256).expect("sign"),
            "missing_attribute",
        ),
        (
            crate::sign_detached(&d.self_signed, &d.key, b"body")
                .map(|b| {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD.decode(b).expect("b64")
                })
                .expect("detached"),
            "missing_attribute",
        ),
    ];
    for (der, reason) in cases {
        let e = PkiMessage::decode(&der).expect_err(reason);
        assert_eq!(e.reason(), reason, "{e}");
        assert_eq!(e.fail_info(), None, "{e}");
    }
    // A messageType that is not a number.
    let attrs = vec![
        asn1::attribute(oids::MESSAGE_TYPE, asn1::printable("PKCSReq").expect("v")).expect("a"),
        asn1::attribute(oids::TRANSACTION_ID, asn1::printable(TID).expect("v")).expect("a"),
        asn1::attribute(oids::SENDER_NONCE, asn1::octets(&NONCE).expect("v")).expect("a"),
    ];
    let der = signed::sign(Some(b"x"), attrs, &d.self_signed, &d.key, &[], Digest::Sha256).expect("sign");
    assert!(matches!(PkiMessage::decode(&der), Err(ScepError::BadAttribute("messageType"))));
}

// ---- badMessageCheck -----------------------------------------------------------------------

#[test]
fn signature_by_another_key_is_bad_message_check() {
    let pki = pki();
    let d = device(Some("x"));
    let der = build_request(&ClientRequest {
        message_type: MessageType::PKCS_REQ,
        csr_der: &d.csr,
        signer_cert: &d.self_signed,
        signer_key: &rsa(2048),
        recipient: &pki.ra,
        transaction_id: TID,
        sender_nonce: &NONCE,
        cipher: ContentCipher::Aes128Cbc,
        digest: Digest::Sha256,
        secret: &secret(),
    })
    .expect("request");
    let r = refused(&pki, &der);
    assert!(matches!(r.error, ScepError::SignatureInvalid));
    assert_eq!(r.fail_info(), FailInfo::BAD_MESSAGE_CHECK);
    // Still answerable: the failure goes back to the (claimed) requester.
    assert_eq!(r.reply.transaction_id, TID);
    assert_eq!(r.reply.recipient_nonce, NONCE);
}

fn outer(der: &[u8]) -> SignedData {
    ContentInfo::from_der(der).expect("ci").content.decode_as::<SignedData>().expect("sd")
}

fn wrap(sd: &SignedData) -> Vec<u8> {
    ContentInfo { content_type: oids::SIGNED_DATA, content: Any::encode_from(sd).expect("any") }.to_der().expect("der")
}

#[test]
fn altered_content_is_bad_message_check() {
    let pki = pki();
    let d = device(Some("x"));
    let mut sd = outer(&pkcs_req(&pki, &d));
    sd.encap_content_info.econtent = Some(asn1::octets(b"other content").expect("octets"));
    let r = refused(&pki, &wrap(&sd));
    assert!(matches!(r.error, ScepError::ContentDigestMismatch), "{:?}", r.error);
    assert_eq!(r.fail_info(), FailInfo::BAD_MESSAGE_CHECK);
}

#[test]
fn unknown_digest_is_bad_alg() {
    let pki = pki();
    let d = device(Some("x"));
    let mut sd = outer(&pkcs_req(&pki, &d));
    let mut infos: Vec<_> = sd.signer_infos.0.iter().cloned().collect();
    infos[0].digest_alg.oid = der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.2.5"); // MD5
    sd.signer_infos = cms::signed_data::SignerInfos::try_from(infos).expect("infos");
    let r = refused(&pki, &wrap(&sd));
    assert!(matches!(r.error, ScepError::UnsupportedDigest(_)), "{:?}", r.error);
    assert_eq!(r.fail_info(), FailInfo::BAD_ALG);
}

/// A PKCSReq whose pkcsPKIEnvelope is `envelope` as given, correctly signed.
fn signed_request(d: &Device, message_type: MessageType, envelope: &[u8]) -> Vec<u8> {
    let attrs = vec![
        asn1::attribute(oids::MESSAGE_TYPE, asn1::printable(&message_type.to_string()).expect("v")).expect("a"),
        asn1::attribute(oids::TRANSACTION_ID, asn1::printable(TID).expect("v")).expect("a"),
        asn1::attribute(oids::SENDER_NONCE, asn1::octets(&NONCE).expect("v")).expect("a"),
    ];
    signed::sign(Some(envelope), attrs, &d.self_signed, &d.key, &[], Digest::Sha256).expect("sign")
}

fn edit_envelope(der: &[u8], f: impl FnOnce(&mut EnvelopedData)) -> Vec<u8> {
    let mut ed = ContentInfo::from_der(der).expect("ci").content.decode_as::<EnvelopedData>().expect("ed");
    f(&mut ed);
    ContentInfo { content_type: oids::ENVELOPED_DATA, content: Any::encode_from(&ed).expect("any") }
        .to_der()
        .expect("der")
}

fn ktri_edit(ed: &mut EnvelopedData, f: impl FnOnce(&mut cms::enveloped_data::KeyTransRecipientInfo)) {
    let mut infos: Vec<RecipientInfo> = ed.recip_infos.0.iter().cloned().collect();
    if let RecipientInfo::Ktri(k) = &mut infos[0] {
        f(k);
    }
    ed.recip_infos = cms::enveloped_data::RecipientInfos(der::asn1::SetOfVec::try_from(infos).expect("set"));
}

#[test]
fn envelope_refusals() {
    let pki = pki();
    let d = device(Some("x"));
    let good = envelope::encrypt(&d.csr, &pki.ra, ContentCipher::Aes128Cbc, &secret()).expect("env");
    let other_ra = {
        let key = rsa(2048);
        let profile = LeafProfile {
            common_name: Some("Another RA"),
            names: &[],
            usage: Usage::Unrestricted,
            not_before: NOW - 60,
            not_after: NOW + 3600,
            serial: &serial(11),
        };
        devpki::issue_leaf_certificate(&pki.ca, &pki.ca_key, &key, &profile).expect("ra")
    };
    let cases: Vec<(Vec<u8>, &str, FailInfo)> = vec![
        (b"not an envelope".to_vec(), "bad_envelope", FailInfo::BAD_MESSAGE_CHECK),
        (certs_only(std::slice::from_ref(&pki.ca)).expect("deg"), "bad_envelope", FailInfo::BAD_MESSAGE_CHECK),
        (
            envelope::encrypt(&d.csr, &other_ra, ContentCipher::Aes128Cbc, &secret()).expect("env"),
            "not_for_us",
            FailInfo::BAD_MESSAGE_CHECK,
        ),
        (
            edit_envelope(&good, |ed| {
                ktri_edit(ed, |k| k.key_enc_alg.oid = der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.7"))
            }),
            "unsupported_key_transport",
            FailInfo::BAD_ALG,
        ),
        (
            edit_envelope(&good, |ed| {
                ed.encrypted_content.content_enc_alg.oid = der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.3.2")
            }), // RC2-CBC
            "unsupported_content_cipher",
            FailInfo::BAD_ALG,
        ),
        (
            edit_envelope(&good, |ed| {
                ktri_edit(ed, |k| {
                    let mut b = k.enc_key.as_bytes().to_vec();
                    b[10] ^= 0xff;
                    k.enc_key = der::asn1::OctetString::new(b).expect("octets");
                })
            }),
            "decrypt_failed",
            FailInfo::BAD_MESSAGE_CHECK,
        ),
        (
            envelope::encrypt(b"this is not a CSR", &pki.ra, ContentCipher::Aes128Cbc, &secret()).expect("env"),
            "bad_csr",
            FailInfo::BAD_REQUEST,
        ),
    ];
    for (env, reason, fail_info) in cases {
        let r = refused(&pki, &signed_request(&d, MessageType::PKCS_REQ, &env));
        assert_eq!(r.error.reason(), reason, "{}", r.error);
        assert_eq!(r.fail_info(), fail_info, "{reason}");
    }
    // No pkcsPKIEnvelope at all.
    let attrs = vec![
        asn1::attribute(oids::MESSAGE_TYPE, asn1::printable("19").expect("v")).expect("a"),
        asn1::attribute(oids::TRANSACTION_ID, asn1::printable(TID).expect("v")).expect("a"),
        asn1::attribute(oids::SENDER_NONCE, asn1::octets(&NONCE).expect("v")).expect("a"),
    ];
    let der = signed::sign(None, attrs, &d.self_signed, &d.key, &[], Digest::Sha256).expect("sign");
    assert_eq!(refused(&pki, &der).error.reason(), "bad_envelope");
}

#[test]
fn tampered_csr_signature_is_bad_message_check() {
    let pki = pki();
    let mut d = device(Some("x"));
    let last = d.csr.len() - 1;
    d.csr[last] ^= 0x01;
    let r = refused(&pki, &pkcs_req(&pki, &d));
    assert!(matches!(r.error, ScepError::CsrSignatureInvalid), "{:?}", r.error);
    assert_eq!(r.fail_info(), FailInfo::BAD_MESSAGE_CHECK);
}

// ---- badAlg: keys --------------------------------------------------------------------------

#[test]
fn weak_and_unsupported_keys_are_bad_alg() {
    let pki = pki();
    for (key, reason) in [
        (rsa(1024), "weak_key"),
        (ec(Nid::SECP224R1), "weak_key"),
        (PKey::generate_ed25519().expect("ed25519"), "unsupported_key_type"),
    ] {
        // The request itself is signed with a strong key; only the CSR's key is weak.
        let signer_key = rsa(2048);
        let name = subject("weak");
        let csr = match build_csr(&key, &name, Some("x")) {
            Ok(c) => c,
            // Ed25519 cannot sign through build_csr's SHA-256 signer: build it with openssl.
            Err(_) => {
                let mut b = openssl::x509::X509ReqBuilder::new().expect("b");
                b.set_subject_name(&name).expect("name");
                b.set_pubkey(&key).expect("key");
                b.sign(&key, openssl::hash::MessageDigest::null()).expect("sign");
                b.build().to_der().expect("der")
            }
        };
        let d = Device {
            csr,
            self_signed: self_signed_certificate(&signer_key, &name, NOW - 60, NOW + 60, &serial(4)).expect("ss"),
            key: signer_key,
        };
        let r = refused(&pki, &pkcs_req(&pki, &d));
        assert_eq!(r.error.reason(), reason, "{}", r.error);
        assert_eq!(r.fail_info(), FailInfo::BAD_ALG);
    }
    // The strength rule on its own.
    assert!(
        check_key_strength(&PKey::public_key_from_der(&rsa(2048).public_key_to_der().expect("der")).expect("pub"))
            .is_ok()
    );
    assert!(
        check_key_strength(
            &PKey::public_key_from_der(&ec(Nid::SECP384R1).public_key_to_der().expect("der")).expect("pub")
        )
        .is_ok()
    );
}

// ---- badRequest ----------------------------------------------------------------------------

#[test]
fn unsupported_message_types_are_bad_request() {
    let pki = pki();
    let d = device(Some("x"));
    for t in
        [MessageType::CERT_POLL, MessageType::GET_CERT, MessageType::GET_CRL, MessageType::UPDATE_REQ, MessageType(99)]
    {
        let r = refused(&pki, &request(&pki, &d, t, ContentCipher::Aes128Cbc));
        assert!(matches!(r.error, ScepError::UnsupportedMessageType(m) if m == t), "{:?}", r.error);
        assert_eq!(r.fail_info(), FailInfo::BAD_REQUEST);
    }
}

#[test]
fn pkcs_req_signer_must_be_self_signed_with_the_csr_key() {
    let pki = pki();
    let d = device(Some("x"));
    // Signed with a CA-issued certificate for the same key.
    let issued =
        devpki::issue_device_certificate(&pki.ca, &pki.ca_key, &d.key, "device-0001", NOW - 60, NOW + 60, &serial(6))
            .expect("cert");
    let not_self = Device { key: d.key.clone(), csr: d.csr.clone(), self_signed: issued };
    let r = refused(&pki, &pkcs_req(&pki, &not_self));
    assert!(matches!(r.error, ScepError::SignerNotSelfSigned), "{:?}", r.error);
    assert_eq!(r.fail_info(), FailInfo::BAD_REQUEST);
    // Self-signed, but with another key than the CSR's.
    let other = device(Some("x"));
    let mixed = Device { key: other.key, csr: d.csr.clone(), self_signed: other.self_signed };
    let r = refused(&pki, &pkcs_req(&pki, &mixed));
    assert!(matches!(r.error, ScepError::SignerKeyMismatch), "{:?}", r.error);
    assert_eq!(r.fail_info(), FailInfo::BAD_REQUEST);
}

// ---- Client-side checks --------------------------------------------------------------------

#[test]
fn client_rejects_replies_not_meant_for_it() {
    let pki = pki();
    let d = device(Some("x"));
    let req = pki.verify(&pkcs_req(&pki, &d)).expect("verify");
    let reply = req.reply.failure(pki.server(), FailInfo::BAD_REQUEST, &SERVER_NONCE).expect("failure");
    assert!(matches!(
        parse_cert_rep(&reply, &pki.ca, TID, &NONCE, &d.self_signed, &d.key, None),
        Err(ScepError::UnexpectedSigner)
    ));
    assert!(matches!(
        parse_cert_rep(&reply, &pki.ra, "other", &NONCE, &d.self_signed, &d.key, None),
        Err(ScepError::NotOurTransaction("transactionID"))
    ));
    assert!(matches!(
        parse_cert_rep(&reply, &pki.ra, TID, b"other-nonce", &d.self_signed, &d.key, None),
        Err(ScepError::NotOurTransaction("recipientNonce"))
    ));
    // A request is not a CertRep.
    assert!(matches!(
        parse_cert_rep(&pkcs_req(&pki, &d), &d.self_signed, TID, &NONCE, &d.self_signed, &d.key, None),
        Err(ScepError::BadAttribute("messageType"))
    ));
}

// ---- Labels --------------------------------------------------------------------------------

#[test]
fn fail_info_mapping_and_labels() {
    use ScepError::*;
    let all: Vec<(ScepError, Option<FailInfo>)> = vec![
        (NotCms, None),
        (NotSignedData, None),
        (SignerCount(2), None),
        (NoSignerCertificate, None),
        (MissingAttribute("x"), None),
        (BadAttribute("x"), None),
        (UnsupportedDigest("x".into()), Some(FailInfo::BAD_ALG)),
        (UnsupportedSignatureAlgorithm("x".into()), Some(FailInfo::BAD_ALG)),
        (UnsupportedKeyTransport("x".into()), Some(FailInfo::BAD_ALG)),
        (UnsupportedContentCipher("x".into()), Some(FailInfo::BAD_ALG)),
        (UnsupportedKeyType("x".into()), Some(FailInfo::BAD_ALG)),
        (WeakKey("x".into()), Some(FailInfo::BAD_ALG)),
        (RequesterKeyNotRsa, Some(FailInfo::BAD_ALG)),
        (SignatureInvalid, Some(FailInfo::BAD_MESSAGE_CHECK)),
        (ContentDigestMismatch, Some(FailInfo::BAD_MESSAGE_CHECK)),
        (BadEnvelope, Some(FailInfo::BAD_MESSAGE_CHECK)),
        (NotForUs, Some(FailInfo::BAD_MESSAGE_CHECK)),
        (DecryptFailed, Some(FailInfo::BAD_MESSAGE_CHECK)),
        (CsrSignatureInvalid, Some(FailInfo::BAD_MESSAGE_CHECK)),
        (UnsupportedMessageType(MessageType(20)), Some(FailInfo::BAD_REQUEST)),
        (BadCsr, Some(FailInfo::BAD_REQUEST)),
        (SignerNotSelfSigned, Some(FailInfo::BAD_REQUEST)),
        (SignerKeyMismatch, Some(FailInfo::BAD_REQUEST)),
        (RenewalCertNotOurs("x".into()), Some(FailInfo::BAD_CERT_ID)),
        (RenewalCertNotValid("x".into()), Some(FailInfo::BAD_TIME)),
        (UnexpectedSigner, None),
        (NotOurTransaction("x"), None),
        (NoCertificate, None),
        (InvalidInput("x"), None),
        (Crypto(openssl::error::ErrorStack::get()), None),
        (Encode("x".into()), None),
    ];
    let mut labels: Vec<&str> = all.iter().map(|(e, _)| e.reason()).collect();
    for (e, fi) in &all {
        assert_eq!(e.fail_info(), *fi, "{e:?}");
    }
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), all.len());
    assert_eq!(FailInfo::BAD_CERT_ID.to_string(), "4");
    assert_eq!(MessageType::PKCS_REQ.label(), "PKCSReq");
    assert_eq!(MessageType(77).label(), "other");
}
