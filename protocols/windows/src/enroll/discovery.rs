//! MS-MDE2 discovery (§3.1): the client's `Discover` request and the `DiscoverResponse` that
//! tells it which authentication to use and where the policy and enrollment services are.

use std::fmt;

use super::soap::{self, ClientCredential, Envelope};
use super::xml::{Element, Writer};
use super::{EnrollError, ReplyError, ns};

/// How the client authenticates to the policy and enrollment services. Open: a value this
/// build does not know round-trips.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AuthPolicy {
    /// WS-Security `UsernameToken` (user name and password) in each request.
    OnPremise,
    /// A security token from an STS (`AuthenticationServiceUrl`), sent as a
    /// `DeviceEnrollmentUserToken`.
    Federated,
    /// A client certificate (provisioning packages).
    Certificate,
    Other(String),
}

impl AuthPolicy {
    pub fn parse(s: &str) -> Self {
        match s {
            "OnPremise" => AuthPolicy::OnPremise,
            "Federated" => AuthPolicy::Federated,
            "Certificate" => AuthPolicy::Certificate,
            other => AuthPolicy::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            AuthPolicy::OnPremise => "OnPremise",
            AuthPolicy::Federated => "Federated",
            AuthPolicy::Certificate => "Certificate",
            AuthPolicy::Other(s) => s,
        }
    }
}

impl fmt::Display for AuthPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `RequestVersion`, an `xsd:decimal` ("4.0", "5.0", "9.0" from Windows 11 25H2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestVersion {
    /// As sent.
    pub text: String,
    pub major: u32,
    pub minor: u32,
}

impl RequestVersion {
    /// The oldest version this service speaks (Windows 10's).
    pub const MIN_MAJOR: u32 = 4;

    pub fn parse(text: &str) -> Result<Self, EnrollError> {
        let t = text.trim();
        let invalid = || EnrollError::Invalid { element: "RequestVersion", value: t.to_owned(), why: "not a decimal" };
        let (major, minor) = t.split_once('.').unwrap_or((t, "0"));
        let digits = |s: &str| !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(major) || !(minor.is_empty() || digits(minor)) {
            return Err(invalid());
        }
        let minor = if minor.is_empty() { 0 } else { minor.parse().map_err(|_| invalid())? };
        Ok(RequestVersion { text: t.to_owned(), major: major.parse().map_err(|_| invalid())?, minor })
    }

    pub fn is_supported(&self) -> bool {
        self.major >= Self::MIN_MAJOR
    }
}

/// A `Discover` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverRequest {
    pub message_id: Option<String>,
    pub email_address: Option<String>,
    pub request_version: RequestVersion,
    pub device_type: Option<String>,
    pub application_version: Option<String>,
    pub os_edition: Option<String>,
    pub os_version: Option<String>,
    /// The policies the client supports, in its order; empty when it did not say.
    pub auth_policies: Vec<AuthPolicy>,
}

fn opt_text(parent: &Element, name: &str) -> Option<String> {
    parent.child_local(name).map(|e| e.text_trimmed().to_owned()).filter(|s| !s.is_empty())
}

impl DiscoverRequest {
    /// Decodes and checks a `Discover` request. A `RequestVersion` below 4.0 is refused
    /// ([`EnrollError::UnsupportedVersion`]); any later one is accepted.
    pub fn decode(body: &[u8]) -> Result<DiscoverRequest, EnrollError> {
        let env = Envelope::decode(body)?;
        env.expect_action(ns::ACTION_DISCOVER)?;
        let discover = env.expect_body(ns::DISCOVERY, "Discover")?;
        let request = discover.child_local("request").ok_or(EnrollError::Missing("Discover/request"))?;
        let version = request.child_local("RequestVersion").ok_or(EnrollError::Missing("RequestVersion"))?;
        let request_version = RequestVersion::parse(version.text_trimmed())?;
        if !request_version.is_supported() {
            return Err(EnrollError::UnsupportedVersion(request_version.text));
        }
        // `<AuthPolicies><AuthPolicy>OnPremise</AuthPolicy>…</AuthPolicies>`, or (in Microsoft's
        // certificate example) the policy as the text of `AuthPolicies` itself.
        let auth_policies = match request.child_local("AuthPolicies") {
            Some(p) if p.children.is_empty() => p.text_trimmed().split_whitespace().map(AuthPolicy::parse).collect(),
            Some(p) => p.children_local("AuthPolicy").map(|a| AuthPolicy::parse(a.text_trimmed())).collect(),
            None => Vec::new(),
        };
        Ok(DiscoverRequest {
            message_id: env.header.message_id.clone(),
            email_address: opt_text(request, "EmailAddress"),
            request_version,
            device_type: opt_text(request, "DeviceType"),
            application_version: opt_text(request, "ApplicationVersion"),
            os_edition: opt_text(request, "OSEdition"),
            os_version: opt_text(request, "OSVersion"),
            auth_policies,
        })
    }

    /// The request as Windows sends it, to `to` (the discovery URL).
    pub fn encode(&self, message_id: &str, to: &str) -> Vec<u8> {
        soap::request_envelope(ns::ACTION_DISCOVER, message_id, to, &ClientCredential::None, |w: &mut Writer| {
            w.open("Discover", &[("xmlns", ns::DISCOVERY)]);
            w.open("request", &[("xmlns:i", ns::XSI)]);
            if let Some(e) = &self.email_address {
                w.leaf("EmailAddress", &[], e);
            }
            w.leaf("RequestVersion", &[], &self.request_version.text);
            for (name, value) in [
                ("DeviceType", &self.device_type),
                ("ApplicationVersion", &self.application_version),
                ("OSEdition", &self.os_edition),
                ("OSVersion", &self.os_version),
            ] {
                if let Some(v) = value {
                    w.leaf(name, &[], v);
                }
            }
            if !self.auth_policies.is_empty() {
                w.open("AuthPolicies", &[]);
                for p in &self.auth_policies {
                    w.leaf("AuthPolicy", &[], p.as_str());
                }
                w.close();
            }
            w.close().close();
        })
    }
}

/// `DiscoverResponse/DiscoverResult`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverResponse {
    pub auth_policy: AuthPolicy,
    pub enrollment_version: Option<String>,
    pub enrollment_policy_service_url: Option<String>,
    pub enrollment_service_url: String,
    /// The STS for `Federated`.
    pub authentication_service_url: Option<String>,
}

impl DiscoverResponse {
    /// The reply to the request whose `MessageID` was `relates_to`.
    pub fn encode(&self, relates_to: Option<&str>, activity_id: &str) -> Vec<u8> {
        soap::response_envelope(ns::ACTION_DISCOVER_RESPONSE, relates_to, Some(activity_id), None, |w: &mut Writer| {
            w.open("DiscoverResponse", &[("xmlns", ns::DISCOVERY)]);
            w.open("DiscoverResult", &[]);
            w.leaf("AuthPolicy", &[], self.auth_policy.as_str());
            if let Some(v) = &self.enrollment_version {
                w.leaf("EnrollmentVersion", &[], v);
            }
            if let Some(u) = &self.enrollment_policy_service_url {
                w.leaf("EnrollmentPolicyServiceUrl", &[], u);
            }
            w.leaf("EnrollmentServiceUrl", &[], &self.enrollment_service_url);
            if let Some(u) = &self.authentication_service_url {
                w.leaf("AuthenticationServiceUrl", &[], u);
            }
            w.close().close();
        })
    }

    /// Reads a reply: the response, or the fault the server sent.
    pub fn decode(body: &[u8]) -> Result<DiscoverResponse, ReplyError> {
        let env = Envelope::decode(body)?;
        if let Some(f) = super::Fault::from_body(&env.body)? {
            return Err(ReplyError::Fault(f));
        }
        let resp = env.expect_body(ns::DISCOVERY, "DiscoverResponse")?;
        let result = resp.child_local("DiscoverResult").ok_or(EnrollError::Missing("DiscoverResult"))?;
        let auth_policy = opt_text(result, "AuthPolicy").ok_or(EnrollError::Missing("AuthPolicy"))?;
        Ok(DiscoverResponse {
            auth_policy: AuthPolicy::parse(&auth_policy),
            enrollment_version: opt_text(result, "EnrollmentVersion"),
            enrollment_policy_service_url: opt_text(result, "EnrollmentPolicyServiceUrl"),
            enrollment_service_url: opt_text(result, "EnrollmentServiceUrl")
                .ok_or(EnrollError::Missing("EnrollmentServiceUrl"))?,
            authentication_service_url: opt_text(result, "AuthenticationServiceUrl"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: &str) -> DiscoverRequest {
        DiscoverRequest {
            message_id: Some("urn:uuid:1".into()),
            email_address: Some("user@example.com".into()),
            request_version: RequestVersion::parse(version).expect("version"),
            device_type: Some("CIMClient_Windows".into()),
            application_version: Some("10.0.26200.1".into()),
            os_edition: Some("72".into()),
            os_version: None,
            auth_policies: vec![AuthPolicy::OnPremise, AuthPolicy::Federated],
        }
    }

    #[test]
    fn versions() {
        for (text, major, minor) in [("4.0", 4, 0), ("9.0", 9, 0), ("10", 10, 0), ("5.12", 5, 12), (" 4. ", 4, 0)] {
            let v = RequestVersion::parse(text).expect(text);
            assert_eq!((v.major, v.minor), (major, minor), "{text}");
            assert!(v.is_supported());
        }
        assert!(!RequestVersion::parse("3.0").expect("3.0").is_supported());
        for bad in ["", "x", "4.x", "-4.0", "1e3", "4.0.1"] {
            assert!(RequestVersion::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn request_round_trip_and_version_rule() {
        for v in ["4.0", "5.0", "9.0"] {
            let r = request(v);
            let back = DiscoverRequest::decode(&r.encode("urn:uuid:1", "https://h/EnrollmentServer/Discovery.svc"));
            assert_eq!(back.expect("decodes"), r);
        }
        let old = request("3.0").encode("urn:uuid:1", "https://h/");
        assert_eq!(DiscoverRequest::decode(&old), Err(EnrollError::UnsupportedVersion("3.0".into())));
    }

    #[test]
    fn response_round_trip() {
        let r = DiscoverResponse {
            auth_policy: AuthPolicy::Federated,
            enrollment_version: Some("4.0".into()),
            enrollment_policy_service_url: Some("https://h/EnrollmentServer/Policy.svc".into()),
            enrollment_service_url: "https://h/EnrollmentServer/Enrollment.svc".into(),
            authentication_service_url: Some("https://sts.example.com/auth".into()),
        };
        assert_eq!(DiscoverResponse::decode(&r.encode(Some("urn:uuid:1"), "a-1")).expect("decodes"), r);
    }
}
