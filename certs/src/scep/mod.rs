//! SCEP (RFC 8894) PKI messages as Apple devices and common SCEP clients use them: PKCSReq and
//! RenewalReq in, CertRep out (server side), and the same messages the other way round (client
//! side, for tests and emulated devices).
//!
//! A PKI message is a CMS SignedData whose signed attributes carry messageType, transactionID and
//! the nonces, and whose content (the pkcsPKIEnvelope) is an EnvelopedData encrypted to the
//! CA/RA certificate, holding a PKCS#10 request (requests) or a certs-only SignedData with the
//! issued certificate (SUCCESS replies).
//!
//! Supported: RSA PKCS#1 v1.5 and ECDSA signer signatures with SHA-1/256/384/512 (SHA-1 only as
//! chosen by a requester); RSA PKCS#1 v1.5 key transport; AES-128/192/256-CBC and DES-EDE3-CBC
//! content encryption, single DES only when the caller allows it; BER input (indefinite lengths).
//! Not supported: GetCertInitial/CertPoll, GetCert, GetCRL, UpdateReq (refused with badRequest),
//! RSAES-OAEP, key agreement and password recipients, AuthEnvelopedData (AES-GCM).
//!
//! What it does not do: no IO, no clock (`now` comes in), no randomness of its own (nonces and
//! content keys come in as [`EnvelopeSecret`]; openssl draws RSA padding and ECDSA nonces), no
//! state (challenges, issued certificates and replay checks belong to the caller). The ASN.1
//! structures are RustCrypto's (`cms`, `x509-cert`); every cryptographic operation is openssl's.

mod asn1;
mod client;
mod csr;
mod envelope;
mod error;
mod oids;
mod server;
mod signed;
mod types;

pub use client::{CertRep, ClientRequest, build_request, parse_cert_rep, self_signed_certificate};
pub use csr::{CsrInfo, MIN_RSA_BITS, build_csr, check_key_strength, inspect_csr, subject_text};
pub use error::ScepError;
pub use server::{CertRequest, PkiMessage, Refused, ReplyTo, ServerIdentity, VerifyOptions};
pub use signed::{certs_only, parse_certs_only};
pub use types::{ContentCipher, Digest, EnvelopeSecret, FailInfo, MessageType, PkiStatus};

#[cfg(test)]
mod tests;
