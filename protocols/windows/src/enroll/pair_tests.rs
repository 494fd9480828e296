//! An in-memory client and server, both from this module, through a whole enrollment: what the
//! emulated device sends the server decodes, what the server answers the device reads.

use super::client::{Discovery, Enrolled};
use super::*;

const BASE: &str = "https://mdm.example.com";

/// A server that knows one password and answers with fixed certificates.
fn server(path: &str, body: &[u8]) -> Vec<u8> {
    let fault = |e: EnrollError, action| Fault::for_error(&e, "trace").encode(action, None);
    match path {
        "/EnrollmentServer/Discovery.svc" => match DiscoverRequest::decode(body) {
            Ok(r) => DiscoverResponse {
                auth_policy: AuthPolicy::OnPremise,
                enrollment_version: Some("4.0".into()),
                enrollment_policy_service_url: Some(format!("{BASE}/EnrollmentServer/Policy.svc")),
                enrollment_service_url: format!("{BASE}/EnrollmentServer/Enrollment.svc"),
                authentication_service_url: None,
            }
            .encode(r.message_id.as_deref(), "a1"),
            Err(e) => fault(e, ns::ACTION_DISCOVER_RESPONSE),
        },
        "/EnrollmentServer/Policy.svc" => match GetPoliciesRequest::decode(body) {
            Ok(r) => GetPoliciesResponse::windows_default().encode(r.message_id.as_deref(), "a2"),
            Err(e) => fault(e, ns::ACTION_GET_POLICIES_RESPONSE),
        },
        _ => match RequestSecurityToken::decode(body) {
            Ok(r) => {
                let token = r.security.and_then(|s| s.username_token);
                if token.map(|t| t.password) != Some("secret".into()) {
                    return Fault::new(
                        Subcode::AUTHENTICATION,
                        ErrorType::of_subcode(&Subcode::AUTHENTICATION),
                        "no",
                        "t",
                    )
                    .encode(ns::ACTION_RSTRC, r.message_id.as_deref());
                }
                let device = r.context.get("DeviceID").unwrap_or("?").to_owned();
                let doc = EnrollmentProvisioning {
                    roots: vec![CertificateEntry { thumbprint: "ROOT".into(), der: vec![9] }],
                    client: CertificateEntry { thumbprint: "LEAF".into(), der: r.csr },
                    store: CertStore::User,
                    renew: None,
                    account: ManagementAccount {
                        provider_id: "P".into(),
                        name: device,
                        addr: format!("{BASE}/ManagementServer/MDM.svc"),
                        client_cert_search: None,
                        app_auth: None,
                    },
                    poll: PollSchedule::default(),
                }
                .to_doc()
                .encode();
                RequestSecurityTokenResponse { provisioning_doc: doc }.encode(r.message_id.as_deref(), "a3", 0)
            }
            Err(e) => fault(e, ns::ACTION_RSTRC),
        },
    }
}

fn path(url: &str) -> &str {
    url.strip_prefix(BASE).expect("our URL")
}

fn enroll(password: &str) -> Result<Enrolled, ReplyError> {
    let discovery = Discovery::new(DiscoverRequest {
        message_id: None,
        email_address: Some("u@example.com".into()),
        request_version: RequestVersion::parse("9.0").expect("version"),
        device_type: Some("CIMClient_Windows".into()),
        application_version: Some("10.0.26200.1".into()),
        os_edition: Some("4".into()),
        os_version: None,
        auth_policies: vec![AuthPolicy::OnPremise],
    });
    let url = format!("{BASE}/EnrollmentServer/Discovery.svc");
    let discovered = discovery.clone().on_response(&server(path(&url), &discovery.request("m1", &url)))?;
    let cred = ClientCredential::UsernameToken { username: "u@example.com".into(), password: password.into() };
    let mut ctx = AdditionalContext::default();
    ctx.push("DeviceID", "DEV-1");
    let (url, body) = discovered.policy_request("m2", &cred, &ctx).expect("a policy service");
    let policy = discovered.on_policy_response(&server(path(&url), &body))?;
    assert_eq!(policy.policy.minimal_key_length, 2048);
    let (url, body) = policy.enroll_request("m3", &cred, b"csr".to_vec(), CsrFormat::Pkcs10, ctx);
    policy.on_enroll_response(&server(path(&url), &body))
}

#[test]
fn a_whole_enrollment() {
    let enrolled = enroll("secret").expect("enrolled");
    assert_eq!(enrolled.identity.client.der, b"csr");
    assert_eq!(enrolled.identity.name.as_deref(), Some("DEV-1"));
    assert_eq!(enrolled.identity.management_url, format!("{BASE}/ManagementServer/MDM.svc"));
}

#[test]
fn a_fault_reaches_the_client_as_a_fault() {
    match enroll("wrong") {
        Err(ReplyError::Fault(f)) => assert_eq!(f.subcode, Subcode::AUTHENTICATION),
        other => panic!("expected a fault, got {other:?}"),
    }
}
