//! SOAP faults of the enrollment services (MS-MDE2 §2.2.10), in the shape Intune sends:
//!
//! ```text
//! <s:Fault>
//!   <s:Code><s:Value>s:Receiver</s:Value><s:Subcode><s:Value>s:Authorization</s:Value></s:Subcode></s:Code>
//!   <s:Reason><s:Text xml:lang="en-US">…</s:Text></s:Reason>
//!   <s:Detail><DeviceEnrollmentServiceError xmlns="http://schemas.microsoft.com/windows/pki/2009/01/enrollment">
//!     <ErrorType>DeviceCapReached</ErrorType><Message>…</Message><TraceId>…</TraceId>
//!   </DeviceEnrollmentServiceError></s:Detail>
//! </s:Fault>
//! ```
//!
//! The subcode decides the `MENROLL_E_DEVICE_*` error the client shows (0x80180001..07), the
//! error type the more specific one (0x80180013..19). Both vocabularies are open: a value this
//! build does not name still decodes and re-encodes exactly.

use std::borrow::Cow;
use std::fmt;

use super::xml::{self, Writer};
use super::{EnrollError, ns, soap};

/// A fault subcode, by local name (`MessageFormat`). Written with the `s:` prefix (SOAP
/// envelope namespace), except `InternalServiceFault` and `InvalidSecurity`, which MS-MDE2
/// puts under `a:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subcode(Cow<'static, str>);

impl Subcode {
    /// 0x80180001: the message could not be read.
    pub const MESSAGE_FORMAT: Subcode = Subcode::named("MessageFormat");
    /// 0x80180002: the user was not recognised (credentials).
    pub const AUTHENTICATION: Subcode = Subcode::named("Authentication");
    /// 0x80180003: the user may not enroll (this device).
    pub const AUTHORIZATION: Subcode = Subcode::named("Authorization");
    /// 0x80180004: no certificate could be issued for the request.
    pub const CERTIFICATE_REQUEST: Subcode = Subcode::named("CertificateRequest");
    /// 0x80180005: a server-side condition (maintenance, not supported).
    pub const ENROLLMENT_SERVER: Subcode = Subcode::named("EnrollmentServer");
    /// 0x80180006: the server failed unexpectedly.
    pub const INTERNAL_SERVICE_FAULT: Subcode = Subcode::named("InternalServiceFault");
    /// 0x80180007: the security header could not be read.
    pub const INVALID_SECURITY: Subcode = Subcode::named("InvalidSecurity");

    pub const fn named(s: &'static str) -> Self {
        Subcode(Cow::Borrowed(s))
    }

    pub fn other(s: impl Into<String>) -> Self {
        Subcode(Cow::Owned(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The prefix MS-MDE2 writes it with.
    pub fn prefix(&self) -> &'static str {
        match self.as_str() {
            "InternalServiceFault" | "InvalidSecurity" => "a",
            _ => "s",
        }
    }

    /// The `MENROLL_E_DEVICE_*` HRESULT the client reports, for the subcodes MS-MDE2 names.
    pub fn hresult(&self) -> Option<u32> {
        Some(match self.as_str() {
            "MessageFormat" => 0x8018_0001,
            "Authentication" => 0x8018_0002,
            "Authorization" => 0x8018_0003,
            "CertificateRequest" => 0x8018_0004,
            "EnrollmentServer" => 0x8018_0005,
            "InternalServiceFault" => 0x8018_0006,
            "InvalidSecurity" => 0x8018_0007,
            _ => return None,
        })
    }
}

impl fmt::Display for Subcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `DeviceEnrollmentServiceError/ErrorType`. Besides the specific types of MS-MDE2, Intune
/// writes the subcode's name when no specific type applies; so does this gateway.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ErrorType(Cow<'static, str>);

impl ErrorType {
    /// 0x80180013: the user has enrolled too many devices.
    pub const DEVICE_CAP_REACHED: ErrorType = ErrorType::named("DeviceCapReached");
    /// 0x80180014: this platform or version is not supported.
    pub const DEVICE_NOT_SUPPORTED: ErrorType = ErrorType::named("DeviceNotSupported");
    /// 0x80180015: device management is not supported (here: not offered).
    pub const NOT_SUPPORTED: ErrorType = ErrorType::named("NotSupported");
    /// 0x80180016: the certificate may not be renewed.
    pub const NOT_ELIGIBLE_TO_RENEW: ErrorType = ErrorType::named("NotEligibleToRenew");
    /// 0x80180017: the service is in maintenance.
    pub const IN_MAINTENANCE: ErrorType = ErrorType::named("InMaintenance");
    /// 0x80180018: the user has no licence for device management.
    pub const USER_LICENSE: ErrorType = ErrorType::named("UserLicense");
    /// 0x80180019: the enrollment data (certificate request, device identifiers) is invalid.
    pub const INVALID_ENROLLMENT_DATA: ErrorType = ErrorType::named("InvalidEnrollmentData");
    /// 0x80180032: a server message shown to the user.
    pub const CUSTOM_SERVER_ERROR: ErrorType = ErrorType::named("CustomServerError");

    pub const fn named(s: &'static str) -> Self {
        ErrorType(Cow::Borrowed(s))
    }

    pub fn other(s: impl Into<String>) -> Self {
        ErrorType(Cow::Owned(s.into()))
    }

    /// The generic type Intune writes: the subcode's own name.
    pub fn of_subcode(subcode: &Subcode) -> Self {
        ErrorType(Cow::Owned(subcode.as_str().to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn hresult(&self) -> Option<u32> {
        Some(match self.as_str() {
            "DeviceCapReached" => 0x8018_0013,
            "DeviceNotSupported" => 0x8018_0014,
            "NotSupported" => 0x8018_0015,
            "NotEligibleToRenew" => 0x8018_0016,
            "InMaintenance" => 0x8018_0017,
            "UserLicense" => 0x8018_0018,
            "InvalidEnrollmentData" => 0x8018_0019,
            "CustomServerError" => 0x8018_0032,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A fault as sent or received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub subcode: Subcode,
    pub error_type: ErrorType,
    /// `s:Reason/s:Text` and `Message`: what the client logs (and, for `CustomServerError`,
    /// shows).
    pub message: String,
    /// `TraceId` (and the `ActivityId` of the reply): lets an operator find the log line.
    pub trace_id: String,
}

impl Fault {
    pub fn new(
        subcode: Subcode,
        error_type: ErrorType,
        message: impl Into<String>,
        trace_id: impl Into<String>,
    ) -> Self {
        Fault { subcode, error_type, message: message.into(), trace_id: trace_id.into() }
    }

    /// The fault for a message that could not be decoded.
    pub fn for_error(error: &EnrollError, trace_id: impl Into<String>) -> Self {
        let (subcode, error_type) = error.fault_kind();
        Fault::new(subcode, error_type, error.to_string(), trace_id)
    }

    /// The whole reply envelope. `action` is the response action of the operation that failed
    /// (MS-MDE2's example uses the RSTRC action for an enrollment fault), `relates_to` the
    /// request's `MessageID` when it had one.
    pub fn encode(&self, action: &str, relates_to: Option<&str>) -> Vec<u8> {
        soap::response_envelope(action, relates_to, Some(&self.trace_id), None, |w: &mut Writer| {
            w.open("s:Fault", &[]);
            w.open("s:Code", &[]).leaf("s:Value", &[], "s:Receiver");
            w.open("s:Subcode", &[])
                .leaf("s:Value", &[], &format!("{}:{}", self.subcode.prefix(), self.subcode))
                .close();
            w.close();
            w.open("s:Reason", &[]).leaf("s:Text", &[("xml:lang", "en-US")], &self.message).close();
            w.open("s:Detail", &[]);
            w.open("DeviceEnrollmentServiceError", &[("xmlns", ns::ENROLLMENT)])
                .leaf("ErrorType", &[], self.error_type.as_str())
                .leaf("Message", &[], &self.message)
                .leaf("TraceId", &[], &self.trace_id)
                .close();
            w.close();
            w.close();
        })
    }

    /// Reads a fault from a reply: `Ok(None)` when the envelope carries no fault. Element
    /// names in the detail are matched without regard to case (the MS-MDE2 example writes
    /// them in lower case).
    pub fn decode(body: &[u8]) -> Result<Option<Fault>, EnrollError> {
        let envelope = soap::Envelope::decode(body)?;
        Fault::from_body(&envelope.body)
    }

    /// [`Fault::decode`] on an already decoded body element.
    pub fn from_body(body: &xml::Element) -> Result<Option<Fault>, EnrollError> {
        if !body.is(ns::SOAP, "Fault") {
            return Ok(None);
        }
        let code = body.child(ns::SOAP, "Code").ok_or(EnrollError::Missing("s:Code"))?;
        let sub = code
            .child(ns::SOAP, "Subcode")
            .and_then(|s| s.child(ns::SOAP, "Value"))
            .ok_or(EnrollError::Missing("s:Subcode/s:Value"))?;
        let sub = sub.text_trimmed();
        let local = sub.rsplit_once(':').map(|(_, l)| l).unwrap_or(sub);
        let subcode = match [
            Subcode::MESSAGE_FORMAT,
            Subcode::AUTHENTICATION,
            Subcode::AUTHORIZATION,
            Subcode::CERTIFICATE_REQUEST,
            Subcode::ENROLLMENT_SERVER,
            Subcode::INTERNAL_SERVICE_FAULT,
            Subcode::INVALID_SECURITY,
        ]
        .into_iter()
        .find(|s| s.as_str().eq_ignore_ascii_case(local))
        {
            Some(s) => s,
            None => Subcode::other(local),
        };
        let reason = body
            .child(ns::SOAP, "Reason")
            .and_then(|r| r.child(ns::SOAP, "Text"))
            .map(|t| t.text_trimmed().to_owned())
            .unwrap_or_default();
        let detail = body
            .child(ns::SOAP, "Detail")
            .and_then(|d| d.children.iter().find(|c| c.name.eq_ignore_ascii_case("DeviceEnrollmentServiceError")));
        let field = |name: &str| {
            detail
                .and_then(|d| d.children.iter().find(|c| c.name.eq_ignore_ascii_case(name)))
                .map(|c| c.text_trimmed().to_owned())
        };
        let error_type = match field("ErrorType") {
            Some(t) if !t.is_empty() => [
                ErrorType::DEVICE_CAP_REACHED,
                ErrorType::DEVICE_NOT_SUPPORTED,
                ErrorType::NOT_SUPPORTED,
                ErrorType::NOT_ELIGIBLE_TO_RENEW,
                ErrorType::IN_MAINTENANCE,
                ErrorType::USER_LICENSE,
                ErrorType::INVALID_ENROLLMENT_DATA,
                ErrorType::CUSTOM_SERVER_ERROR,
            ]
            .into_iter()
            .find(|e| e.as_str().eq_ignore_ascii_case(&t))
            .unwrap_or(ErrorType::other(t)),
            _ => ErrorType::of_subcode(&subcode),
        };
        Ok(Some(Fault {
            message: field("Message").filter(|m| !m.is_empty()).unwrap_or(reason),
            trace_id: field("TraceId").unwrap_or_default(),
            subcode,
            error_type,
        }))
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}: {}", self.subcode, self.error_type, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_every_named_subcode() {
        for (sub, ty) in [
            (Subcode::MESSAGE_FORMAT, ErrorType::of_subcode(&Subcode::MESSAGE_FORMAT)),
            (Subcode::AUTHENTICATION, ErrorType::of_subcode(&Subcode::AUTHENTICATION)),
            (Subcode::AUTHORIZATION, ErrorType::DEVICE_CAP_REACHED),
            (Subcode::CERTIFICATE_REQUEST, ErrorType::INVALID_ENROLLMENT_DATA),
            (Subcode::ENROLLMENT_SERVER, ErrorType::IN_MAINTENANCE),
            (Subcode::INTERNAL_SERVICE_FAULT, ErrorType::of_subcode(&Subcode::INTERNAL_SERVICE_FAULT)),
            (Subcode::INVALID_SECURITY, ErrorType::of_subcode(&Subcode::INVALID_SECURITY)),
        ] {
            let f = Fault::new(sub.clone(), ty, "why <not>", "trace-1");
            let bytes = f.encode(ns::ACTION_RSTRC, Some("urn:uuid:1"));
            let text = String::from_utf8(bytes.clone()).expect("utf-8");
            assert!(text.contains(&format!("<s:Value>{}:{}</s:Value>", sub.prefix(), sub)), "{text}");
            assert!(sub.hresult().is_some());
            assert_eq!(Fault::decode(&bytes).expect("decodes"), Some(f));
        }
    }

    #[test]
    fn unknown_values_round_trip() {
        let f = Fault::new(Subcode::other("Throttled"), ErrorType::other("TooSoon"), "later", "t");
        let back = Fault::decode(&f.encode(ns::ACTION_RSTRC, None)).expect("decodes").expect("a fault");
        assert_eq!(back, f);
        assert_eq!((back.subcode.hresult(), back.error_type.hresult()), (None, None));
    }
}
