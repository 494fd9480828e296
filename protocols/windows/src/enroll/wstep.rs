//! MS-WSTEP `RequestSecurityToken` as MS-MDE2 profiles it (§3.4, renewal §3.5): the client
//! sends a certificate request (PKCS#10, or PKCS#7 around one) with context items; the server
//! answers with a `RequestSecurityTokenResponseCollection` whose token is the base64
//! provisioning document.

use base64::Engine;

use super::context::AdditionalContext;
use super::soap::{self, BinarySecurityToken, ClientCredential, Envelope, Security};
use super::xml::Writer;
use super::{EnrollError, ReplyError, ns};

/// `wst:RequestType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// First enrollment.
    Issue,
    /// Renewal of the certificate the client authenticates with (TLS).
    Renew,
}

impl RequestType {
    pub fn uri(self) -> &'static str {
        match self {
            RequestType::Issue => ns::REQUEST_TYPE_ISSUE,
            RequestType::Renew => ns::REQUEST_TYPE_RENEW,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RequestType::Issue => "issue",
            RequestType::Renew => "renew",
        }
    }
}

/// How the certificate request is wrapped, from the token's `ValueType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrFormat {
    Pkcs10,
    /// A CMS/PKCS#7 SignedData whose content is the PKCS#10 (renewals).
    Pkcs7,
}

impl CsrFormat {
    pub fn value_type(self) -> &'static str {
        match self {
            CsrFormat::Pkcs10 => ns::VALUE_TYPE_PKCS10,
            CsrFormat::Pkcs7 => ns::VALUE_TYPE_PKCS7,
        }
    }
}

/// A `RequestSecurityToken`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSecurityToken {
    pub message_id: Option<String>,
    pub security: Option<Security>,
    pub request_type: RequestType,
    pub csr_format: CsrFormat,
    /// The request, decoded from base64.
    pub csr: Vec<u8>,
    pub context: AdditionalContext,
}

impl RequestSecurityToken {
    pub fn decode(body: &[u8]) -> Result<RequestSecurityToken, EnrollError> {
        let env = Envelope::decode(body)?;
        env.expect_action(ns::ACTION_RST)?;
        let rst = env.expect_body(ns::WST, "RequestSecurityToken")?;
        if let Some(t) = rst.child_local("TokenType") {
            let t = t.text_trimmed();
            if t != ns::TOKEN_TYPE_ENROLLMENT {
                return Err(EnrollError::UnsupportedTokenType(t.to_owned()));
            }
        }
        let request_type = match rst.child_local("RequestType").map(|e| e.text_trimmed()) {
            Some(ns::REQUEST_TYPE_ISSUE) => RequestType::Issue,
            Some(ns::REQUEST_TYPE_RENEW) => RequestType::Renew,
            Some(other) => return Err(EnrollError::UnsupportedRequestType(other.to_owned())),
            None => return Err(EnrollError::Missing("wst:RequestType")),
        };
        let token = rst.child_local("BinarySecurityToken").ok_or(EnrollError::Missing("wsse:BinarySecurityToken"))?;
        let token = BinarySecurityToken::from_element(token);
        let csr_format = match token.value_type.as_deref() {
            // Leniently by suffix: some clients vary the prefix's case.
            Some(v) if v.to_ascii_uppercase().ends_with("#PKCS10") => CsrFormat::Pkcs10,
            Some(v) if v.to_ascii_uppercase().ends_with("#PKCS7") => CsrFormat::Pkcs7,
            Some(other) => return Err(EnrollError::UnsupportedValueType(other.to_owned())),
            // The reader sniffs the encoding anyway.
            None => CsrFormat::Pkcs10,
        };
        let csr = token.decode()?;
        let context = match rst.child_local("AdditionalContext") {
            Some(c) => AdditionalContext::from_element(c),
            None => AdditionalContext::default(),
        };
        Ok(RequestSecurityToken {
            message_id: env.header.message_id.clone(),
            security: env.header.security.clone(),
            request_type,
            csr_format,
            csr,
            context,
        })
    }

    /// The request as Windows sends it.
    pub fn encode(&self, message_id: &str, to: &str, credential: &ClientCredential) -> Vec<u8> {
        soap::request_envelope(ns::ACTION_RST, message_id, to, credential, |w: &mut Writer| {
            w.open("wst:RequestSecurityToken", &[]);
            w.leaf("wst:TokenType", &[], ns::TOKEN_TYPE_ENROLLMENT);
            w.leaf("wst:RequestType", &[], self.request_type.uri());
            w.leaf(
                "wsse:BinarySecurityToken",
                &[("ValueType", self.csr_format.value_type()), ("EncodingType", ns::ENCODING_BASE64)],
                &base64::engine::general_purpose::STANDARD.encode(&self.csr),
            );
            self.context.write(w);
            w.close();
        })
    }
}

/// The successful answer: the provisioning document (XML) the client applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSecurityTokenResponse {
    pub provisioning_doc: Vec<u8>,
}

impl RequestSecurityTokenResponse {
    /// The reply, with a `u:Timestamp` from `now` to `now + 5 min` as real servers send.
    pub fn encode(&self, relates_to: Option<&str>, activity_id: &str, now: i64) -> Vec<u8> {
        let created = soap::utc_timestamp(now);
        let expires = soap::utc_timestamp(now + 300);
        let doc = base64::engine::general_purpose::STANDARD.encode(&self.provisioning_doc);
        soap::response_envelope(
            ns::ACTION_RSTRC,
            relates_to,
            Some(activity_id),
            Some((&created, &expires)),
            |w: &mut Writer| {
                w.open("RequestSecurityTokenResponseCollection", &[("xmlns", ns::WST)]);
                w.open("RequestSecurityTokenResponse", &[]);
                w.leaf("TokenType", &[], ns::TOKEN_TYPE_ENROLLMENT);
                w.leaf("DispositionMessage", &[("xmlns", ns::ENROLLMENT)], "");
                w.open("RequestedSecurityToken", &[]);
                w.leaf(
                    "BinarySecurityToken",
                    &[
                        ("xmlns", ns::WSSE),
                        ("ValueType", ns::VALUE_TYPE_PROVISION_DOC),
                        ("EncodingType", ns::ENCODING_BASE64),
                    ],
                    &doc,
                );
                w.close();
                w.leaf("RequestID", &[("xmlns", ns::ENROLLMENT)], "0");
                w.close().close();
            },
        )
    }

    /// Reads a reply: the provisioning document, or the fault the server sent.
    pub fn decode(body: &[u8]) -> Result<RequestSecurityTokenResponse, ReplyError> {
        let env = Envelope::decode(body)?;
        if let Some(f) = super::Fault::from_body(&env.body)? {
            return Err(ReplyError::Fault(f));
        }
        let coll = env.expect_body(ns::WST, "RequestSecurityTokenResponseCollection")?;
        let mut tokens = Vec::new();
        coll.descendants_local("BinarySecurityToken", &mut tokens);
        let token = tokens
            .into_iter()
            .map(BinarySecurityToken::from_element)
            .find(|t| t.value_type.as_deref() == Some(ns::VALUE_TYPE_PROVISION_DOC))
            .ok_or(EnrollError::Missing("the provisioning document's BinarySecurityToken"))?;
        Ok(RequestSecurityTokenResponse { provisioning_doc: token.decode()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rst(request_type: RequestType, csr_format: CsrFormat) -> RequestSecurityToken {
        let mut context = AdditionalContext::default();
        context.push("DeviceID", "0123ABCD").push("EnrollmentType", "Full").push("MAC", "a").push("MAC", "b");
        RequestSecurityToken {
            message_id: Some("urn:uuid:3".into()),
            security: None,
            request_type,
            csr_format,
            csr: vec![0x30, 0x03, 0x02, 0x01, 0x00],
            context,
        }
    }

    #[test]
    fn request_round_trip() {
        for (t, f) in [(RequestType::Issue, CsrFormat::Pkcs10), (RequestType::Renew, CsrFormat::Pkcs7)] {
            let r = rst(t, f);
            let back = RequestSecurityToken::decode(&r.encode("urn:uuid:3", "https://h/e", &ClientCredential::None))
                .expect("decodes");
            assert_eq!(back, r);
            assert_eq!(back.context.all("mac").collect::<Vec<_>>(), ["a", "b"]);
        }
    }

    #[test]
    fn refusals() {
        let r = rst(RequestType::Issue, CsrFormat::Pkcs10);
        let text = String::from_utf8(r.encode("m", "t", &ClientCredential::None)).expect("utf-8");
        let other = text.replace(ns::REQUEST_TYPE_ISSUE, "http://docs.oasis-open.org/ws-sx/ws-trust/200512/Cancel");
        assert!(matches!(RequestSecurityToken::decode(other.as_bytes()), Err(EnrollError::UnsupportedRequestType(_))));
        let not_b64 = text.replace("MAMCAQA=", "!!!");
        assert_eq!(
            RequestSecurityToken::decode(not_b64.as_bytes()),
            Err(EnrollError::NotBase64("BinarySecurityToken"))
        );
        let vt = text.replace(ns::VALUE_TYPE_PKCS10, "urn:x509v3");
        assert!(matches!(RequestSecurityToken::decode(vt.as_bytes()), Err(EnrollError::UnsupportedValueType(_))));
    }

    #[test]
    fn response_round_trip() {
        let r = RequestSecurityTokenResponse { provisioning_doc: b"<wap-provisioningdoc/>".to_vec() };
        let bytes = r.encode(Some("urn:uuid:3"), "act", 1_700_000_000);
        assert_eq!(RequestSecurityTokenResponse::decode(&bytes).expect("decodes"), r);
    }
}
