//! The emulator's certificates: a fake "Apple push CA" that issues MDM push certificates the
//! way Apple's portal does (subject `UID=<topic>, CN=APSP:<topic>`, RSA 2048, clientAuth), and
//! the emulator's own TLS server certificate (from a separate server CA the gateway is told to
//! trust through `apple.apns_ca`).

use std::time::{SystemTime, UNIX_EPOCH};

use mdm_certs::devpki::{self, SubjectAltName};
use mdm_certs::{PKey, Private, X509};
use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509NameBuilder};

use super::ApnsError;

pub(super) fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn serial() -> Result<Asn1Integer, ApnsError> {
    let mut bytes: [u8; 16] = rand_bytes();
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(BigNum::from_slice(&bytes)?.to_asn1_integer()?)
}

fn rand_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    // openssl's DRBG; a failure here means the process cannot make keys either.
    let _ = openssl::rand::rand_bytes(&mut b);
    b
}

/// A certificate authority for the emulator: the fake Apple push CA, or the server CA.
#[derive(Debug, Clone)]
pub struct PushCa {
    cert: X509,
    key: PKey<Private>,
}

impl PushCa {
    /// A new CA named `common_name`, valid ten years from an hour ago.
    pub fn generate(common_name: &str) -> Result<PushCa, ApnsError> {
        let key = devpki::generate_key()?;
        let cert = devpki::create_ca(&key, common_name, unix_now(), 3650, &rand_bytes())?;
        Ok(PushCa { cert, key })
    }

    /// A CA saved earlier (so a standalone emulator keeps trusting the same push certificates).
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<PushCa, ApnsError> {
        Ok(PushCa { cert: X509::from_pem(cert_pem)?, key: PKey::private_key_from_pem(key_pem)? })
    }

    pub fn cert_pem(&self) -> String {
        devpki::to_pem(&self.cert)
    }

    pub fn key_pem(&self) -> String {
        devpki::key_to_pem(&self.key)
    }

    pub(super) fn cert(&self) -> &X509 {
        &self.cert
    }

    /// An MDM push certificate for `topic` valid until `not_after` (unix seconds; may be in the
    /// past, for tests of expired certificates): `(certificate PEM, PKCS#8 key PEM)`.
    pub fn issue_push_certificate(&self, topic: &str, not_after: i64) -> Result<(String, String), ApnsError> {
        let key = devpki::generate_rsa_key(2048)?;
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid(Nid::USERID, topic)?;
        name.append_entry_by_nid(Nid::COMMONNAME, &format!("APSP:{topic}"))?;
        name.append_entry_by_nid(Nid::COUNTRYNAME, "US")?;
        let name = name.build();
        let not_before = (unix_now() - 3600).min(not_after - 86_400);
        let mut b = X509Builder::new()?;
        b.set_version(2)?;
        let serial = serial()?;
        b.set_serial_number(&serial)?;
        b.set_subject_name(&name)?;
        b.set_issuer_name(self.cert.subject_name())?;
        b.set_pubkey(&key)?;
        let (nb, na) = (Asn1Time::from_unix(not_before)?, Asn1Time::from_unix(not_after)?);
        b.set_not_before(&nb)?;
        b.set_not_after(&na)?;
        b.append_extension(BasicConstraints::new().critical().build()?)?;
        b.append_extension(KeyUsage::new().critical().digital_signature().key_encipherment().build()?)?;
        b.append_extension(ExtendedKeyUsage::new().client_auth().build()?)?;
        let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(Some(&self.cert), None))?;
        b.append_extension(ski)?;
        let aki = AuthorityKeyIdentifier::new().keyid(false).build(&b.x509v3_context(Some(&self.cert), None))?;
        b.append_extension(aki)?;
        b.sign(&self.key, MessageDigest::sha256())?;
        let cert = b.build();
        Ok((devpki::to_pem(&cert), devpki::key_to_pem(&key)))
    }

    /// A TLS server certificate for `127.0.0.1`, `::1` and `localhost`: `(chain PEM, key PEM)`.
    pub(super) fn issue_server_certificate(&self) -> Result<(String, String), ApnsError> {
        let key = devpki::generate_key()?;
        let names = [
            SubjectAltName::Ip([127, 0, 0, 1].into()),
            SubjectAltName::Ip(std::net::Ipv6Addr::LOCALHOST.into()),
            SubjectAltName::Dns("localhost".into()),
        ];
        let cert =
            devpki::issue_server_certificate(&self.cert, &self.key, &key, &names, unix_now(), 365, &rand_bytes())?;
        Ok((devpki::to_pem(&cert) + &self.cert_pem(), devpki::key_to_pem(&key)))
    }
}

/// The topic of a push certificate: its subject UID.
pub(super) fn topic_of(cert_der: &[u8]) -> Option<String> {
    let cert = X509::from_der(cert_der).ok()?;
    let uid = cert.subject_name().entries_by_nid(Nid::USERID).next()?;
    uid.data().to_string().ok()
}
