//! The client side of an enrollment, as typed steps (what an emulated Windows device runs):
//! [`Discovery`] → [`Discovered`] → [`PolicyKnown`] → [`Enrolled`], and renewal from an
//! enrolled identity. Each step makes the request bytes and consumes the reply; the caller
//! moves the bytes (no IO here) and chooses the message ids.

use super::context::AdditionalContext;
use super::discovery::{DiscoverRequest, DiscoverResponse};
use super::policy::{GetPoliciesRequest, GetPoliciesResponse};
use super::provisioning::{ProvisionedIdentity, ProvisioningDoc};
use super::soap::ClientCredential;
use super::wstep::{CsrFormat, RequestSecurityToken, RequestSecurityTokenResponse, RequestType};
use super::{EnrollError, ReplyError};

/// Step 1: the `Discover` request.
#[derive(Debug, Clone)]
pub struct Discovery {
    pub request: DiscoverRequest,
}

impl Discovery {
    pub fn new(request: DiscoverRequest) -> Self {
        Discovery { request }
    }

    /// The body to POST to the discovery `url`.
    pub fn request(&self, message_id: &str, url: &str) -> Vec<u8> {
        self.request.encode(message_id, url)
    }

    pub fn on_response(self, body: &[u8]) -> Result<Discovered, ReplyError> {
        Ok(Discovered { response: DiscoverResponse::decode(body)? })
    }
}

/// Step 2: the services are known; ask for the certificate policy.
#[derive(Debug, Clone)]
pub struct Discovered {
    pub response: DiscoverResponse,
}

impl Discovered {
    /// The policy service URL and the `GetPolicies` body; `None` when discovery named no policy
    /// service (then [`Discovered::without_policy`]).
    pub fn policy_request(
        &self,
        message_id: &str,
        credential: &ClientCredential,
        context: &AdditionalContext,
    ) -> Option<(String, Vec<u8>)> {
        let url = self.response.enrollment_policy_service_url.clone()?;
        let body = GetPoliciesRequest::encode(message_id, &url, credential, context);
        Some((url, body))
    }

    pub fn on_policy_response(self, body: &[u8]) -> Result<PolicyKnown, ReplyError> {
        Ok(PolicyKnown { discovery: self.response, policy: GetPoliciesResponse::decode(body)? })
    }

    /// Go on with the default policy (RSA 2048).
    pub fn without_policy(self) -> PolicyKnown {
        PolicyKnown { discovery: self.response, policy: GetPoliciesResponse::windows_default() }
    }
}

/// Step 3: the policy is known; send the certificate request.
#[derive(Debug, Clone)]
pub struct PolicyKnown {
    pub discovery: DiscoverResponse,
    pub policy: GetPoliciesResponse,
}

impl PolicyKnown {
    /// The enrollment service URL and the `RequestSecurityToken` (Issue) body.
    pub fn enroll_request(
        &self,
        message_id: &str,
        credential: &ClientCredential,
        csr: Vec<u8>,
        csr_format: CsrFormat,
        context: AdditionalContext,
    ) -> (String, Vec<u8>) {
        let url = self.discovery.enrollment_service_url.clone();
        let rst = RequestSecurityToken {
            message_id: Some(message_id.to_owned()),
            security: None,
            request_type: RequestType::Issue,
            csr_format,
            csr,
            context,
        };
        let body = rst.encode(message_id, &url, credential);
        (url, body)
    }

    pub fn on_enroll_response(self, body: &[u8]) -> Result<Enrolled, ReplyError> {
        Enrolled::from_reply(body)
    }
}

/// An enrollment (or renewal) that succeeded: the provisioning document and what it says.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The document as received (XML).
    pub raw_doc: Vec<u8>,
    pub doc: ProvisioningDoc,
    pub identity: ProvisionedIdentity,
}

impl Enrolled {
    /// Reads a `RequestSecurityTokenResponseCollection` (or the fault in its place).
    pub fn from_reply(body: &[u8]) -> Result<Enrolled, ReplyError> {
        let rstr = RequestSecurityTokenResponse::decode(body)?;
        Enrolled::from_doc(rstr.provisioning_doc).map_err(ReplyError::Decode)
    }

    /// Reads a provisioning document on its own.
    pub fn from_doc(raw_doc: Vec<u8>) -> Result<Enrolled, EnrollError> {
        let doc = ProvisioningDoc::decode(&raw_doc)?;
        let identity = ProvisionedIdentity::from_doc(&doc)?;
        Ok(Enrolled { raw_doc, doc, identity })
    }

    /// A renewal `RequestSecurityToken` (`Renew`, PKCS#7) to the enrollment `url`. Renewals
    /// carry no credential in the header: the client authenticates with its current
    /// certificate over TLS.
    pub fn renewal_request(url: &str, message_id: &str, pkcs7: Vec<u8>, context: AdditionalContext) -> Vec<u8> {
        let rst = RequestSecurityToken {
            message_id: Some(message_id.to_owned()),
            security: None,
            request_type: RequestType::Renew,
            csr_format: CsrFormat::Pkcs7,
            csr: pkcs7,
            context,
        };
        rst.encode(message_id, url, &ClientCredential::None)
    }
}
