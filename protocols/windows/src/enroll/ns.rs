//! Namespaces, SOAP actions and token types of MS-MDE2, MS-XCEP and MS-WSTEP, as they appear
//! on the wire.

/// SOAP 1.2 envelope.
pub const SOAP: &str = "http://www.w3.org/2003/05/soap-envelope";
/// SOAP 1.1 envelope: recognised only to refuse it by name.
pub const SOAP11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// WS-Addressing 1.0.
pub const ADDRESSING: &str = "http://www.w3.org/2005/08/addressing";
/// WS-Security secext.
pub const WSSE: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
/// WS-Security utility (`u:Timestamp`, `u:Id`).
pub const WSU: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";
/// WS-Trust 1.3.
pub const WST: &str = "http://docs.oasis-open.org/ws-sx/ws-trust/200512";
/// WS-Authorization (`ac:AdditionalContext`).
pub const AC: &str = "http://schemas.xmlsoap.org/ws/2006/12/authorization";
pub const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
pub const XSD: &str = "http://www.w3.org/2001/XMLSchema";
/// WCF diagnostics (`ActivityId`).
pub const DIAGNOSTICS: &str = "http://schemas.microsoft.com/2004/09/ServiceModel/Diagnostics";

/// MS-MDE2 discovery (`Discover`, `DiscoverResponse`).
pub const DISCOVERY: &str = "http://schemas.microsoft.com/windows/management/2012/01/enrollment";
/// MS-XCEP (`GetPolicies`, `GetPoliciesResponse`).
pub const XCEP: &str = "http://schemas.microsoft.com/windows/pki/2009/01/enrollmentpolicy";
/// MS-WSTEP enrollment extensions (`RequestID`, `DispositionMessage`) and the fault detail
/// (`DeviceEnrollmentServiceError`).
pub const ENROLLMENT: &str = "http://schemas.microsoft.com/windows/pki/2009/01/enrollment";

pub const ACTION_DISCOVER: &str =
    "http://schemas.microsoft.com/windows/management/2012/01/enrollment/IDiscoveryService/Discover";
pub const ACTION_DISCOVER_RESPONSE: &str =
    "http://schemas.microsoft.com/windows/management/2012/01/enrollment/IDiscoveryService/DiscoverResponse";
pub const ACTION_GET_POLICIES: &str =
    "http://schemas.microsoft.com/windows/pki/2009/01/enrollmentpolicy/IPolicy/GetPolicies";
pub const ACTION_GET_POLICIES_RESPONSE: &str =
    "http://schemas.microsoft.com/windows/pki/2009/01/enrollmentpolicy/IPolicy/GetPoliciesResponse";
pub const ACTION_RST: &str = "http://schemas.microsoft.com/windows/pki/2009/01/enrollment/RST/wstep";
pub const ACTION_RSTRC: &str = "http://schemas.microsoft.com/windows/pki/2009/01/enrollment/RSTRC/wstep";

/// `wsa:ReplyTo` address of every client request.
pub const ANONYMOUS: &str = "http://www.w3.org/2005/08/addressing/anonymous";

/// `wst:TokenType` of an enrollment request and response.
pub const TOKEN_TYPE_ENROLLMENT: &str =
    "http://schemas.microsoft.com/5.0.0.0/ConfigurationManager/Enrollment/DeviceEnrollmentToken";
pub const REQUEST_TYPE_ISSUE: &str = "http://docs.oasis-open.org/ws-sx/ws-trust/200512/Issue";
pub const REQUEST_TYPE_RENEW: &str = "http://docs.oasis-open.org/ws-sx/ws-trust/200512/Renew";

/// `BinarySecurityToken` value types.
pub const VALUE_TYPE_PKCS10: &str = "http://schemas.microsoft.com/windows/pki/2009/01/enrollment#PKCS10";
pub const VALUE_TYPE_PKCS7: &str = "http://schemas.microsoft.com/windows/pki/2009/01/enrollment#PKCS7";
/// The federated (and certificate) user token in the security header.
pub const VALUE_TYPE_USER_TOKEN: &str =
    "http://schemas.microsoft.com/5.0.0.0/ConfigurationManager/Enrollment/DeviceEnrollmentUserToken";
pub const VALUE_TYPE_PROVISION_DOC: &str =
    "http://schemas.microsoft.com/5.0.0.0/ConfigurationManager/Enrollment/DeviceEnrollmentProvisionDoc";
pub const ENCODING_BASE64: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd#base64binary";
pub const PASSWORD_TEXT: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordText";
/// The `u:Id` MS-MDE2 gives the on-premise `UsernameToken`.
pub const USERNAME_TOKEN_ID: &str = "uuid-cc1ccc1f-2fba-4bcf-b063-ffc0cac77917-4";

/// The payload namespace, or the same with the trailing `/` Microsoft's examples put on it.
pub(crate) fn same_ns(got: Option<&str>, expected: &str) -> bool {
    match got {
        Some(g) => g == expected || g.strip_suffix('/') == Some(expected),
        None => false,
    }
}
