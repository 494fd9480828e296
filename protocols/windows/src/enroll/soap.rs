//! The SOAP 1.2 envelope around every enrollment message: WS-Addressing headers, the
//! WS-Security header (`UsernameToken`, `BinarySecurityToken`, `Timestamp`) and the body's
//! payload element; and the envelopes the server and the emulated client write.

use base64::Engine;

use super::xml::{self, Element, Writer};
use super::{EnrollError, ns};

/// A decoded request or reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub header: Header,
    /// The first element inside `s:Body`.
    pub body: Element,
}

/// The headers the enrollment services use; others are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    pub action: Option<String>,
    pub message_id: Option<String>,
    pub to: Option<String>,
    pub relates_to: Option<String>,
    /// `wsse:Security`, when present.
    pub security: Option<Security>,
}

/// `wsse:Security`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    pub username_token: Option<UsernameToken>,
    pub binary_tokens: Vec<BinarySecurityToken>,
}

/// `wsse:UsernameToken` (OnPremise authentication: the UPN and a password).
#[derive(Clone, PartialEq, Eq)]
pub struct UsernameToken {
    pub username: String,
    pub password: String,
    /// `wsse:Password/@Type`; `PasswordText` is the only type MS-MDE2 uses.
    pub password_type: Option<String>,
}

impl std::fmt::Debug for UsernameToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsernameToken")
            .field("username", &self.username)
            .field("password", &"..")
            .field("password_type", &self.password_type)
            .finish()
    }
}

/// A `wsse:BinarySecurityToken`, in the header (a user token) or in the body (the request).
#[derive(Clone, PartialEq, Eq)]
pub struct BinarySecurityToken {
    pub value_type: Option<String>,
    pub encoding_type: Option<String>,
    /// The element's text as sent (base64), whitespace trimmed.
    pub value: String,
}

impl std::fmt::Debug for BinarySecurityToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BinarySecurityToken")
            .field("value_type", &self.value_type)
            .field("encoding_type", &self.encoding_type)
            .field("value_len", &self.value.len())
            .finish()
    }
}

impl BinarySecurityToken {
    pub fn from_element(el: &Element) -> Self {
        BinarySecurityToken {
            value_type: el.attr("ValueType").map(|v| v.trim().to_owned()),
            encoding_type: el.attr("EncodingType").map(|v| v.trim().to_owned()),
            value: el.text_trimmed().to_owned(),
        }
    }

    /// The value decoded from base64. Lenient about what clients send: whitespace and line
    /// breaks inside, standard or URL-safe alphabet, padded or not.
    pub fn decode(&self) -> Result<Vec<u8>, EnrollError> {
        decode_base64(&self.value).ok_or(EnrollError::NotBase64("BinarySecurityToken"))
    }
}

/// Base64 as clients write it (see [`BinarySecurityToken::decode`]); `None` when it is not.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        return None;
    }
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD].iter().find_map(|e| e.decode(&compact).ok())
}

fn text_of(parent: &Element, ns: &str, name: &str) -> Option<String> {
    parent.child(ns, name).map(|e| e.text_trimmed().to_owned())
}

impl Security {
    fn from_element(el: &Element) -> Result<Self, EnrollError> {
        let username_token = match el.child(ns::WSSE, "UsernameToken") {
            Some(t) => {
                let username = t
                    .child(ns::WSSE, "Username")
                    .ok_or(EnrollError::IncompleteUsernameToken("wsse:Username"))?
                    .text_trimmed()
                    .to_owned();
                let password_el =
                    t.child(ns::WSSE, "Password").ok_or(EnrollError::IncompleteUsernameToken("wsse:Password"))?;
                // The password is compared as sent, surrounding whitespace aside (Microsoft's
                // example puts a line break after it).
                let password = password_el.text_trimmed().to_owned();
                Some(UsernameToken { username, password, password_type: password_el.attr("Type").map(str::to_owned) })
            }
            None => None,
        };
        let binary_tokens = el
            .children
            .iter()
            .filter(|c| c.is(ns::WSSE, "BinarySecurityToken"))
            .map(BinarySecurityToken::from_element)
            .collect();
        Ok(Security { username_token, binary_tokens })
    }

    /// The header's user token (`DeviceEnrollmentUserToken`), when there is one.
    pub fn user_token(&self) -> Option<&BinarySecurityToken> {
        self.binary_tokens.iter().find(|t| t.value_type.as_deref() == Some(ns::VALUE_TYPE_USER_TOKEN))
    }
}

impl Envelope {
    /// Reads a SOAP 1.2 envelope: `s:Envelope`, an optional `s:Header`, and `s:Body` with at
    /// least one element (the payload).
    pub fn decode(body: &[u8]) -> Result<Envelope, EnrollError> {
        let root = xml::parse(body)?;
        if root.is(ns::SOAP11, "Envelope") {
            return Err(EnrollError::Soap11);
        }
        if !root.is(ns::SOAP, "Envelope") {
            return Err(EnrollError::NotEnvelope(root.qualified()));
        }
        let mut header = Header::default();
        if let Some(h) = root.child(ns::SOAP, "Header") {
            header.action = text_of(h, ns::ADDRESSING, "Action");
            header.message_id = text_of(h, ns::ADDRESSING, "MessageID");
            header.to = text_of(h, ns::ADDRESSING, "To");
            header.relates_to = text_of(h, ns::ADDRESSING, "RelatesTo");
            if let Some(s) = h.child(ns::WSSE, "Security") {
                header.security = Some(Security::from_element(s)?);
            }
        }
        let b = root.child(ns::SOAP, "Body").ok_or(EnrollError::NoBody)?;
        let payload = b.children.first().cloned().ok_or(EnrollError::EmptyBody)?;
        Ok(Envelope { header, body: payload })
    }

    /// Checks the `wsa:Action` when the client sent one (real clients always do).
    pub fn expect_action(&self, action: &'static str) -> Result<(), EnrollError> {
        match &self.header.action {
            Some(a) if a != action => Err(EnrollError::WrongAction { expected: action, got: a.clone() }),
            _ => Ok(()),
        }
    }

    /// The payload element must be `{payload_ns}name` (or the same namespace with a trailing
    /// `/`).
    pub fn expect_body(&self, payload_ns: &str, name: &'static str) -> Result<&Element, EnrollError> {
        if self.body.name == name && ns::same_ns(self.body.ns.as_deref(), payload_ns) {
            Ok(&self.body)
        } else {
            Err(EnrollError::UnexpectedBody { expected: name, found: self.body.qualified() })
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for `u:Timestamp`.
pub fn utc_timestamp(unix: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.000Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A server reply: `s:Envelope` declaring `s`, `a` and `u`; the header with `a:Action`, the
/// diagnostics `ActivityId` when given, `a:RelatesTo` when the request had a `MessageID`, and
/// a `o:Security/u:Timestamp` (`created`, `expires`) when given; then `body` inside `s:Body`.
pub fn response_envelope(
    action: &str,
    relates_to: Option<&str>,
    activity_id: Option<&str>,
    timestamp: Option<(&str, &str)>,
    body: impl FnOnce(&mut Writer),
) -> Vec<u8> {
    let mut w = Writer::new();
    w.open("s:Envelope", &[("xmlns:s", ns::SOAP), ("xmlns:a", ns::ADDRESSING), ("xmlns:u", ns::WSU)]);
    w.open("s:Header", &[]);
    w.leaf("a:Action", &[("s:mustUnderstand", "1")], action);
    if let Some(id) = activity_id {
        w.leaf("ActivityId", &[("CorrelationId", id), ("xmlns", ns::DIAGNOSTICS)], id);
    }
    if let Some(r) = relates_to {
        w.leaf("a:RelatesTo", &[], r);
    }
    if let Some((created, expires)) = timestamp {
        w.open("o:Security", &[("xmlns:o", ns::WSSE), ("s:mustUnderstand", "1")]);
        w.open("u:Timestamp", &[("u:Id", "_0")]).leaf("u:Created", &[], created).leaf("u:Expires", &[], expires);
        w.close().close();
    }
    w.close();
    w.open("s:Body", &[]);
    body(&mut w);
    w.close();
    w.finish().into_bytes()
}

/// The credential a client puts in `wsse:Security`.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientCredential {
    /// No security header (discovery).
    None,
    /// OnPremise: UPN and password.
    UsernameToken { username: String, password: String },
    /// Federated (or Certificate): a `DeviceEnrollmentUserToken` holding these bytes.
    UserToken(Vec<u8>),
}

impl std::fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientCredential::None => f.write_str("None"),
            ClientCredential::UsernameToken { username, .. } => {
                f.debug_struct("UsernameToken").field("username", username).finish_non_exhaustive()
            }
            ClientCredential::UserToken(t) => f.debug_struct("UserToken").field("len", &t.len()).finish(),
        }
    }
}

/// A client request as Windows writes it: the namespaces of every enrollment request on the
/// envelope, `a:Action`, `a:MessageID`, `a:ReplyTo` (anonymous), `a:To`, the credential, then
/// `body` inside `s:Body`.
pub fn request_envelope(
    action: &str,
    message_id: &str,
    to: &str,
    credential: &ClientCredential,
    body: impl FnOnce(&mut Writer),
) -> Vec<u8> {
    let mut w = Writer::new();
    w.open(
        "s:Envelope",
        &[
            ("xmlns:s", ns::SOAP),
            ("xmlns:a", ns::ADDRESSING),
            ("xmlns:u", ns::WSU),
            ("xmlns:wsse", ns::WSSE),
            ("xmlns:wst", ns::WST),
            ("xmlns:ac", ns::AC),
        ],
    );
    w.open("s:Header", &[]);
    w.leaf("a:Action", &[("s:mustUnderstand", "1")], action);
    w.leaf("a:MessageID", &[], message_id);
    w.open("a:ReplyTo", &[]).leaf("a:Address", &[], ns::ANONYMOUS).close();
    w.leaf("a:To", &[("s:mustUnderstand", "1")], to);
    match credential {
        ClientCredential::None => {}
        ClientCredential::UsernameToken { username, password } => {
            w.open("wsse:Security", &[("s:mustUnderstand", "1")]);
            w.open("wsse:UsernameToken", &[("u:Id", ns::USERNAME_TOKEN_ID)]).leaf("wsse:Username", &[], username).leaf(
                "wsse:Password",
                &[("wsse:Type", ns::PASSWORD_TEXT)],
                password,
            );
            w.close().close();
        }
        ClientCredential::UserToken(token) => {
            w.open("wsse:Security", &[("s:mustUnderstand", "1")]);
            w.leaf(
                "wsse:BinarySecurityToken",
                &[("ValueType", ns::VALUE_TYPE_USER_TOKEN), ("EncodingType", ns::ENCODING_BASE64)],
                &base64::engine::general_purpose::STANDARD.encode(token),
            );
            w.close();
        }
    }
    w.close();
    w.open("s:Body", &[]);
    body(&mut w);
    w.close();
    w.finish().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_headers_and_security() {
        let bytes = request_envelope(
            ns::ACTION_GET_POLICIES,
            "urn:uuid:1",
            "https://x/EnrollmentServer/Policy.svc",
            &ClientCredential::UsernameToken { username: "u@example.com".into(), password: "p w".into() },
            |w| {
                w.empty("GetPolicies", &[("xmlns", ns::XCEP)]);
            },
        );
        let env = Envelope::decode(&bytes).expect("decodes");
        assert_eq!(env.header.action.as_deref(), Some(ns::ACTION_GET_POLICIES));
        assert_eq!(env.header.message_id.as_deref(), Some("urn:uuid:1"));
        let token = env.header.security.clone().expect("security").username_token.expect("token");
        assert_eq!((token.username.as_str(), token.password.as_str()), ("u@example.com", "p w"));
        assert_eq!(token.password_type.as_deref(), Some(ns::PASSWORD_TEXT));
        assert!(env.expect_body(ns::XCEP, "GetPolicies").is_ok());
        assert!(matches!(env.expect_action(ns::ACTION_RST), Err(EnrollError::WrongAction { .. })));
    }

    #[test]
    fn refusals() {
        let soap11 =
            br#"<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body><x/></e:Body></e:Envelope>"#;
        assert_eq!(Envelope::decode(soap11), Err(EnrollError::Soap11));
        assert!(matches!(Envelope::decode(b"<html/>"), Err(EnrollError::NotEnvelope(_))));
        let no_body = br#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"/>"#;
        assert_eq!(Envelope::decode(no_body), Err(EnrollError::NoBody));
        let empty = br#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body> </s:Body></s:Envelope>"#;
        assert_eq!(Envelope::decode(empty), Err(EnrollError::EmptyBody));
        let half = br#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:o="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"><s:Header><o:Security><o:UsernameToken><o:Username>u</o:Username></o:UsernameToken></o:Security></s:Header><s:Body><x/></s:Body></s:Envelope>"#;
        assert_eq!(Envelope::decode(half), Err(EnrollError::IncompleteUsernameToken("wsse:Password")));
    }

    #[test]
    fn base64_is_read_leniently() {
        assert_eq!(decode_base64("aGVs\r\n bG8="), Some(b"hello".to_vec()));
        assert_eq!(decode_base64("aGVsbG8"), Some(b"hello".to_vec()));
        assert_eq!(decode_base64("-_8"), Some(vec![0xfb, 0xff]));
        assert_eq!(decode_base64("not base64!"), None);
        assert_eq!(decode_base64("  "), None);
    }

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc_timestamp(1_543_537_979), "2018-11-30T00:32:59.000Z");
    }
}
