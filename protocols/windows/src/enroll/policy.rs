//! MS-XCEP `GetPolicies` (MS-MDE2 §3.3): the client asks for the certificate enrollment
//! policy; the answer sets the minimal key length and the hash the request is signed with.

use super::context::AdditionalContext;
use super::soap::{self, ClientCredential, Envelope, Security};
use super::xml::{Element, Writer};
use super::{EnrollError, ReplyError, ns};

/// A `GetPolicies` request. Its `client` and `requestFilter` carry nothing this service acts on
/// (always a fresh, unfiltered policy); the credential is in `security`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetPoliciesRequest {
    pub message_id: Option<String>,
    pub security: Option<Security>,
    /// `client/lastUpdate` when not nil.
    pub last_update: Option<String>,
    /// `client/preferredLanguage` when not nil.
    pub preferred_language: Option<String>,
    pub context: AdditionalContext,
}

fn not_nil(parent: &Element, name: &str) -> Option<String> {
    parent.child_local(name).filter(|e| !e.is_nil()).map(|e| e.text_trimmed().to_owned()).filter(|s| !s.is_empty())
}

impl GetPoliciesRequest {
    pub fn decode(body: &[u8]) -> Result<GetPoliciesRequest, EnrollError> {
        let env = Envelope::decode(body)?;
        env.expect_action(ns::ACTION_GET_POLICIES)?;
        let gp = env.expect_body(ns::XCEP, "GetPolicies")?;
        let client = gp.child_local("client");
        // The context sits next to GetPolicies in Microsoft's example, inside it elsewhere.
        let context = match gp.child_local("AdditionalContext") {
            Some(c) => AdditionalContext::from_element(c),
            None => AdditionalContext::default(),
        };
        Ok(GetPoliciesRequest {
            message_id: env.header.message_id.clone(),
            security: env.header.security.clone(),
            last_update: client.and_then(|c| not_nil(c, "lastUpdate")),
            preferred_language: client.and_then(|c| not_nil(c, "preferredLanguage")),
            context,
        })
    }

    /// The request as Windows sends it.
    pub fn encode(message_id: &str, to: &str, credential: &ClientCredential, context: &AdditionalContext) -> Vec<u8> {
        soap::request_envelope(ns::ACTION_GET_POLICIES, message_id, to, credential, |w: &mut Writer| {
            w.open("GetPolicies", &[("xmlns", ns::XCEP), ("xmlns:xsi", ns::XSI)]);
            w.open("client", &[])
                .empty("lastUpdate", &[("xsi:nil", "true")])
                .empty("preferredLanguage", &[("xsi:nil", "true")])
                .close();
            w.empty("requestFilter", &[("xsi:nil", "true")]);
            if !context.items.is_empty() {
                context.write(w);
            }
            w.close();
        })
    }
}

/// The one policy this service offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetPoliciesResponse {
    /// `privateKeyAttributes/minimalKeyLength` (bits).
    pub minimal_key_length: u32,
    /// The OID the client signs its request with (`hashAlgorithmOIDReference`).
    pub hash_algorithm_oid: String,
    /// Its `defaultName`.
    pub hash_algorithm_name: String,
}

impl GetPoliciesResponse {
    /// What Microsoft's examples and real servers send: RSA 2048 and `sha1RSASign`
    /// (1.3.14.3.2.29), which Windows then uses to sign its PKCS#10 (the CSR reader accepts
    /// that OID). The signature only proves possession of the key; issued certificates are
    /// signed with SHA-256 whatever the request used.
    pub fn windows_default() -> Self {
        GetPoliciesResponse {
            minimal_key_length: 2048,
            hash_algorithm_oid: "1.3.14.3.2.29".into(),
            hash_algorithm_name: "szOID_OIWSEC_sha1RSASign".into(),
        }
    }

    pub fn encode(&self, relates_to: Option<&str>, activity_id: &str) -> Vec<u8> {
        let nil = [("xsi:nil", "true")];
        let key_length = self.minimal_key_length.to_string();
        soap::response_envelope(
            ns::ACTION_GET_POLICIES_RESPONSE,
            relates_to,
            Some(activity_id),
            None,
            |w: &mut Writer| {
                w.open("GetPoliciesResponse", &[("xmlns", ns::XCEP), ("xmlns:xsi", ns::XSI), ("xmlns:xsd", ns::XSD)]);
                w.open("response", &[]);
                w.empty("policyFriendlyName", &nil).empty("nextUpdateHours", &nil).empty("policiesNotChanged", &nil);
                w.open("policies", &[]).open("policy", &[]);
                w.leaf("policyOIDReference", &[], "0");
                w.empty("cAs", &nil);
                w.open("attributes", &[]);
                w.leaf("policySchema", &[], "3");
                w.open("privateKeyAttributes", &[]);
                w.leaf("minimalKeyLength", &[], &key_length);
                for n in ["keySpec", "keyUsageProperty", "permissions", "algorithmOIDReference", "cryptoProviders"] {
                    w.empty(n, &nil);
                }
                w.close();
                for n in
                    ["supersededPolicies", "privateKeyFlags", "subjectNameFlags", "enrollmentFlags", "generalFlags"]
                {
                    w.empty(n, &nil);
                }
                w.leaf("hashAlgorithmOIDReference", &[], "0");
                for n in ["rARequirements", "keyArchivalAttributes", "extensions"] {
                    w.empty(n, &nil);
                }
                w.close(); // attributes
                w.close().close(); // policy, policies
                w.close(); // response
                w.empty("cAs", &nil);
                w.open("oIDs", &[]).open("oID", &[]);
                w.leaf("value", &[], &self.hash_algorithm_oid)
                    .leaf("group", &[], "1")
                    .leaf("oIDReferenceID", &[], "0")
                    .leaf("defaultName", &[], &self.hash_algorithm_name);
                w.close().close();
                w.close();
            },
        )
    }

    /// Reads a reply: the policy, or the fault the server sent.
    pub fn decode(body: &[u8]) -> Result<GetPoliciesResponse, ReplyError> {
        let env = Envelope::decode(body)?;
        if let Some(f) = super::Fault::from_body(&env.body)? {
            return Err(ReplyError::Fault(f));
        }
        let resp = env.expect_body(ns::XCEP, "GetPoliciesResponse")?;
        let mut policies = Vec::new();
        resp.descendants_local("policy", &mut policies);
        let policy = policies.first().ok_or(EnrollError::Missing("policies/policy"))?;
        let attributes = policy.child_local("attributes").ok_or(EnrollError::Missing("policy/attributes"))?;
        let key_length = attributes
            .child_local("privateKeyAttributes")
            .and_then(|p| p.child_local("minimalKeyLength"))
            .ok_or(EnrollError::Missing("minimalKeyLength"))?
            .text_trimmed();
        let minimal_key_length = key_length.parse().map_err(|_| EnrollError::Invalid {
            element: "minimalKeyLength",
            value: key_length.to_owned(),
            why: "not a number",
        })?;
        let hash_ref = attributes.child_local("hashAlgorithmOIDReference").map(|e| e.text_trimmed().to_owned());
        let mut oids = Vec::new();
        resp.descendants_local("oID", &mut oids);
        let hash = oids.iter().find(|o| {
            o.child_local("oIDReferenceID").map(|r| r.text_trimmed().to_owned()) == hash_ref && hash_ref.is_some()
        });
        let (hash_algorithm_oid, hash_algorithm_name) = match hash {
            Some(o) => (
                o.child_local("value").map(|v| v.text_trimmed().to_owned()).unwrap_or_default(),
                o.child_local("defaultName").map(|v| v.text_trimmed().to_owned()).unwrap_or_default(),
            ),
            None => (String::new(), String::new()),
        };
        Ok(GetPoliciesResponse { minimal_key_length, hash_algorithm_oid, hash_algorithm_name })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let mut ctx = AdditionalContext::default();
        ctx.push("DeviceID", "ABC").push("EnrollmentType", "Full");
        let cred = ClientCredential::UsernameToken { username: "u@x".into(), password: "p".into() };
        let bytes = GetPoliciesRequest::encode("urn:uuid:2", "https://h/EnrollmentServer/Policy.svc", &cred, &ctx);
        let r = GetPoliciesRequest::decode(&bytes).expect("decodes");
        assert_eq!(r.message_id.as_deref(), Some("urn:uuid:2"));
        assert_eq!((r.last_update, r.preferred_language), (None, None));
        assert_eq!(r.context, ctx);
        assert_eq!(r.security.and_then(|s| s.username_token).map(|t| t.username), Some("u@x".into()));
    }

    #[test]
    fn response_round_trip() {
        let r = GetPoliciesResponse::windows_default();
        assert_eq!(GetPoliciesResponse::decode(&r.encode(Some("urn:uuid:2"), "a")).expect("decodes"), r);
    }
}
