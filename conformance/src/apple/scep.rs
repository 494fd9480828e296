//! A SCEP client as an Apple device runs it for a SCEP payload: GetCACaps, GetCACert, then a
//! PKCSReq with the profile's challenge (signed with a transient self-signed certificate), or a
//! RenewalReq signed with the current identity; the CertRep is checked and decrypted.

use bytes::Bytes;
use mdm_certs::scep::{self, CertRep, ClientRequest, ContentCipher, Digest, EnvelopeSecret, MessageType, ScepError};
use mdm_certs::{PKey, Private, X509};
use openssl::x509::X509Name;
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ScepClientError {
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("SCEP: {0}")]
    Scep(#[from] ScepError),
    #[error("server answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("GetCACert has no certificate with an RSA key to encrypt to")]
    NoRecipient,
    #[error("openssl: {0}")]
    Openssl(#[from] openssl::error::ErrorStack),
}

/// A raw answer of the SCEP endpoint.
#[derive(Debug, Clone)]
pub struct ScepReply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// A request sent and what is needed to read its CertRep.
#[derive(Debug)]
pub struct PendingRequest {
    pub der: Vec<u8>,
    pub transaction_id: String,
    pub sender_nonce: [u8; 16],
    /// The certificate the request was signed with (the reply is encrypted to it) and its key.
    pub signer_cert: X509,
    pub signer_key: PKey<Private>,
    /// The key certified by the request.
    pub new_key: PKey<Private>,
}

impl PendingRequest {
    /// A PKCSReq for `key` with `subject` and `challenge`, encrypted to `recipient`.
    pub fn pkcs_req(
        key: PKey<Private>,
        subject: &X509Name,
        challenge: Option<&str>,
        recipient: &X509,
        now: i64,
    ) -> Result<PendingRequest, ScepClientError> {
        let csr = scep::build_csr(&key, subject, challenge)?;
        let serial = mdm_certs::devpki::serial_from_random(rand::random());
        let self_signed = scep::self_signed_certificate(&key, subject, now - 3600, now + 3600, &serial)?;
        Self::build(MessageType::PKCS_REQ, &csr, self_signed, key.clone(), key, recipient)
    }

    /// A RenewalReq for `new_key` signed with the current identity `cert`/`key`.
    pub fn renewal_req(
        cert: X509,
        key: PKey<Private>,
        new_key: PKey<Private>,
        subject: &X509Name,
        recipient: &X509,
    ) -> Result<PendingRequest, ScepClientError> {
        let csr = scep::build_csr(&new_key, subject, None)?;
        Self::build(MessageType::RENEWAL_REQ, &csr, cert, key, new_key, recipient)
    }

    /// Any request type over an already built CSR (tests use it for the odd cases).
    pub fn build(
        message_type: MessageType,
        csr: &[u8],
        signer_cert: X509,
        signer_key: PKey<Private>,
        new_key: PKey<Private>,
        recipient: &X509,
    ) -> Result<PendingRequest, ScepClientError> {
        // As RFC 8894 suggests: the transaction id is a hash of the public key being certified.
        let transaction_id = hex::encode(Sha256::digest(new_key.public_key_to_der()?));
        let sender_nonce: [u8; 16] = rand::random();
        let der = scep::build_request(&ClientRequest {
            message_type,
            csr_der: csr,
            signer_cert: &signer_cert,
            signer_key: &signer_key,
            recipient,
            transaction_id: &transaction_id,
            sender_nonce: &sender_nonce,
            cipher: ContentCipher::Aes128Cbc,
            digest: Digest::Sha256,
            secret: &EnvelopeSecret(rand::random()),
        })?;
        Ok(PendingRequest { der, transaction_id, sender_nonce, signer_cert, signer_key, new_key })
    }

    /// Reads the CertRep for this request, signed by `server`.
    pub fn read_reply(&self, reply: &[u8], server: &X509) -> Result<CertRep, ScepClientError> {
        Ok(scep::parse_cert_rep(
            reply,
            server,
            &self.transaction_id,
            &self.sender_nonce,
            &self.signer_cert,
            &self.signer_key,
            Some(&self.new_key),
        )?)
    }
}

/// The SCEP endpoint at `url` (e.g. `https://localhost:8443/scep`).
#[derive(Debug, Clone)]
pub struct ScepClient {
    url: String,
    client: reqwest::Client,
}

impl ScepClient {
    pub fn new(url: &str, client: reqwest::Client) -> Self {
        ScepClient { url: url.to_owned(), client }
    }

    async fn reply(resp: reqwest::Response) -> Result<ScepReply, ScepClientError> {
        let status = resp.status().as_u16();
        let content_type =
            resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Ok(ScepReply { status, content_type, body: resp.bytes().await? })
    }

    fn ok(reply: ScepReply) -> Result<ScepReply, ScepClientError> {
        if reply.status == 200 {
            Ok(reply)
        } else {
            Err(ScepClientError::Status {
                status: reply.status,
                body: String::from_utf8_lossy(&reply.body).into_owned(),
            })
        }
    }

    /// `GET ?operation=<op>` with extra query pairs.
    pub async fn get(&self, operation: &str, extra: &[(&str, &str)]) -> Result<ScepReply, ScepClientError> {
        let mut query = vec![("operation", operation)];
        query.extend_from_slice(extra);
        Self::reply(self.client.get(&self.url).query(&query).send().await?).await
    }

    pub async fn ca_caps(&self) -> Result<String, ScepClientError> {
        let r = Self::ok(self.get("GetCACaps", &[]).await?)?;
        Ok(String::from_utf8_lossy(&r.body).into_owned())
    }

    /// The GetCACert certificates (one DER certificate, or a certs-only PKCS#7 for CA + RA).
    pub async fn ca_certs(&self) -> Result<Vec<X509>, ScepClientError> {
        self.ca_certs_named(None).await
    }

    /// GetCACert with `message=<name>` (the CA-IDENT; an Apple SCEP payload's `Name`).
    pub async fn ca_certs_named(&self, name: Option<&str>) -> Result<Vec<X509>, ScepClientError> {
        let extra: Vec<(&str, &str)> = name.map(|n| ("message", n)).into_iter().collect();
        let r = Self::ok(self.get("GetCACert", &extra).await?)?;
        if r.content_type.as_deref() == Some("application/x-x509-ca-cert") {
            return Ok(vec![X509::from_der(&r.body)?]);
        }
        Ok(scep::parse_certs_only(&r.body)?)
    }

    /// The certificate to encrypt to: the RA (an RSA key, not a CA) when there is one.
    pub fn recipient(certs: &[X509]) -> Result<X509, ScepClientError> {
        certs
            .iter()
            .find(|c| {
                let rsa = c.public_key().map(|k| k.id() == openssl::pkey::Id::RSA).unwrap_or(false);
                rsa && c.issued(c) != openssl::x509::X509VerifyResult::OK
            })
            .or_else(|| {
                certs.iter().find(|c| c.public_key().map(|k| k.id() == openssl::pkey::Id::RSA).unwrap_or(false))
            })
            .cloned()
            .ok_or(ScepClientError::NoRecipient)
    }

    /// `POST ?operation=PKIOperation` with `der`.
    pub async fn post_pki(&self, der: &[u8]) -> Result<ScepReply, ScepClientError> {
        let resp = self
            .client
            .post(&self.url)
            .query(&[("operation", "PKIOperation")])
            .header(reqwest::header::CONTENT_TYPE, "application/x-pki-message")
            .body(der.to_vec())
            .send()
            .await?;
        Self::reply(resp).await
    }

    /// `GET ?operation=PKIOperation&message=<base64 der>`.
    pub async fn get_pki(&self, der: &[u8]) -> Result<ScepReply, ScepClientError> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        self.get("PKIOperation", &[("message", &b64)]).await
    }

    /// Sends `req` (POST) and reads the CertRep, signed by `server`.
    pub async fn send(&self, req: &PendingRequest, server: &X509) -> Result<CertRep, ScepClientError> {
        let reply = Self::ok(self.post_pki(&req.der).await?)?;
        req.read_reply(&reply.body, server)
    }
}
