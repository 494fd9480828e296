//! `RequestSecurityToken`: issuing the device certificate (Issue) and renewing it (Renew), each
//! answered with a provisioning document; the certificate, the enrollment that binds it and the
//! event are stored in one transaction before the answer goes out.

use http::HeaderMap;
use mdm_certs::devpki;
use mdm_certs::wstep::{self, MAX_DEVICE_ID_CHARS, WindowsCsr};
use mdm_core::{DeviceId, EventType, Platform};
use mdm_windows::enroll::{
    AppAuth, CertStore, CertificateEntry, EnrollmentProvisioning, ErrorType, ManagementAccount, PollSchedule,
    RenewSettings, RequestSecurityToken, RequestSecurityTokenResponse, Subcode,
};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::auth::{self, Authenticated};
use super::reply::Refusal;
use super::service::{MANAGEMENT_PATH, WindowsEnrollment};
use crate::AppState;
use crate::enrollment_gate::{self, EnrollmentFacts, Ownership};
use crate::server::ConnInfo;
use crate::store::{Enrollment, EnrollmentState, WindowsCertificate, WindowsRecord};

/// How far before issuance certificates start being valid (device clocks a little behind).
const NOT_BEFORE_SLACK_S: i64 = 300;

fn invalid_data(reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal::new(Subcode::MESSAGE_FORMAT, ErrorType::INVALID_ENROLLMENT_DATA, reason, message)
}

fn not_eligible(reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal::new(Subcode::AUTHORIZATION, ErrorType::NOT_ELIGIBLE_TO_RENEW, reason, message)
}

/// A device id this gateway accepts: what Windows sends (hex, GUIDs with or without braces).
fn device_id(native: &str) -> Result<DeviceId, Refusal> {
    let ok = !native.is_empty()
        && native.chars().count() <= MAX_DEVICE_ID_CHARS
        && native.chars().all(|c| c.is_ascii_alphanumeric() || "-_.{}".contains(c));
    if !ok {
        return Err(invalid_data("bad_device_id", format!("DeviceID {native:?} is not a device identifier")));
    }
    DeviceId::new(Platform::Windows, &[native]).map_err(|e| invalid_data("bad_device_id", e.to_string()))
}

fn read_csr(rst: &RequestSecurityToken) -> Result<WindowsCsr, Refusal> {
    wstep::read_certificate_request(&rst.csr).map_err(|e| {
        Refusal::new(Subcode::CERTIFICATE_REQUEST, ErrorType::INVALID_ENROLLMENT_DATA, e.reason(), e.to_string())
    })
}

/// What one issuance produced.
struct Issued {
    der: Vec<u8>,
    record: WindowsCertificate,
}

fn issue(
    svc: &WindowsEnrollment,
    device: &DeviceId,
    csr: &WindowsCsr,
    now: i64,
    upn: Option<&str>,
    auth_policy: &str,
    renewal_of: Option<&str>,
) -> Result<Issued, Refusal> {
    let serial = devpki::serial_from_random(rand::random());
    let not_before = now - NOT_BEFORE_SLACK_S;
    let not_after = now + i64::from(svc.config.cert_validity_days) * 86_400;
    let cert = wstep::issue_windows_device_certificate(
        &svc.ca,
        &svc.ca_key,
        device.native(),
        &csr.public_key,
        not_before,
        not_after,
        &serial,
    )
    .map_err(Refusal::internal)?;
    let der = cert.to_der().map_err(Refusal::internal)?;
    let record = WindowsCertificate {
        cert_sha256: hex::encode(Sha256::digest(&der)),
        device_id: device.clone(),
        serial: hex::encode(serial),
        thumbprint: wstep::thumbprint_sha1(&cert),
        not_before,
        not_after,
        kind: if renewal_of.is_some() { "renew" } else { "enroll" }.to_owned(),
        upn: upn.map(str::to_owned),
        auth_policy: auth_policy.to_owned(),
        renewal_of: renewal_of.map(str::to_owned),
        issued_at: now,
    };
    Ok(Issued { der, record })
}

/// Percent-encodes all but RFC 3986's unreserved characters (`SSLCLIENTCERTSEARCHCRITERIA` is
/// URL-encoded).
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// The provisioning document for a certificate just issued.
fn provisioning(svc: &WindowsEnrollment, device: &DeviceId, issued: &Issued, store: CertStore) -> Vec<u8> {
    let c = &svc.config;
    let p = &c.poll;
    EnrollmentProvisioning {
        roots: vec![svc.root.clone()],
        client: CertificateEntry { thumbprint: issued.record.thumbprint.clone(), der: issued.der.clone() },
        store,
        renew: c.renewal.then_some(RenewSettings {
            robo_support: true,
            renew_period_days: c.renew_period_days,
            retry_interval_days: c.renew_retry_interval_days,
        }),
        account: ManagementAccount {
            provider_id: c.provider_id.clone(),
            name: c.name.clone(),
            addr: svc.url(MANAGEMENT_PATH),
            client_cert_search: Some(format!(
                "Subject=CN%3D{}&Stores=My%5C{}",
                url_escape(device.native()),
                store.as_str()
            )),
            // DM-level credentials Windows expects in the account; the management endpoint
            // authenticates devices by their TLS client certificate, so these are random and kept
            // nowhere.
            app_auth: Some(AppAuth {
                client_secret: random_hex(),
                client_nonce: random_hex(),
                server_name: c.provider_id.clone(),
                server_secret: random_hex(),
                server_nonce: random_hex(),
            }),
        },
        poll: PollSchedule {
            interval_for_first_set_of_retries: Some(p.first_interval_min),
            number_of_first_retries: Some(p.first_count),
            interval_for_second_set_of_retries: Some(p.second_interval_min),
            number_of_second_retries: Some(p.second_count),
            interval_for_remaining_scheduled_retries: Some(p.remaining_interval_min),
            number_of_remaining_scheduled_retries: Some(p.remaining_count),
            poll_on_login: Some(p.poll_on_login),
            all_users_poll_on_first_login: Some(p.poll_on_login),
        },
    }
    .to_doc()
    .encode()
}

fn context_value(rst: &RequestSecurityToken, name: &str) -> Option<String> {
    rst.context.get(name).map(str::to_owned)
}

/// `RequestType` Issue: authenticate, read the request, check the user's device cap, issue,
/// store, answer.
pub(crate) async fn issue_request(
    state: &AppState,
    rst: &RequestSecurityToken,
    now: i64,
    trace_id: &str,
) -> Result<Vec<u8>, Refusal> {
    let svc = &state.windows_enroll;
    let context_device = context_value(rst, "DeviceID");
    let user: Authenticated =
        auth::authenticate(svc, rst.security.as_ref(), "enroll", context_device.as_deref(), now).await?;
    let csr = read_csr(rst)?;
    let native = match (&context_device, &csr.device_id) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => {
            return Err(invalid_data(
                "no_device_id",
                "the request names no device: no DeviceID context item and no device id extension",
            ));
        }
    };
    let device = device_id(&native)?;
    if let (Some(ctx), Some(ext)) = (&context_device, &csr.device_id)
        && !ctx.eq_ignore_ascii_case(ext)
    {
        tracing::info!(platform = "windows", device = %device, extension = %ext, "the CSR's device id extension differs from the DeviceID context item; using DeviceID");
    }

    let enrollment_type = context_value(rst, "EnrollmentType").unwrap_or_else(|| "Full".into());

    // The enrollment gate ([enrollment]): nothing is stored for a refused device but the event.
    let facts = EnrollmentFacts {
        platform: Some(Platform::Windows),
        device_id: Some(device.clone()),
        user: Some(user.upn.clone()),
        os_version: context_value(rst, "OSVersion"),
        serial_number: None,
        imei: context_value(rst, "IMEI"),
        // A device joined to the directory (EnrollmentType Device) is the organisation's, as in Intune.
        declared: enrollment_type.eq_ignore_ascii_case("Device").then_some(Ownership::Corporate),
    };
    let admission = match state.gate.check(state.store.as_ref(), &facts).await.map_err(Refusal::internal)? {
        Ok(a) => a,
        Err(denial) => {
            let event = enrollment_gate::denied_event(&state.events, &device, &facts, &denial);
            state.store.append_events(&[event]).await?;
            tracing::info!(platform = "windows", device = %device, upn = %user.upn, reason = denial.reason.as_str(), "enrollment refused by the enrollment gate");
            let error_type =
                if denial.reason.is_limit() { ErrorType::DEVICE_CAP_REACHED } else { ErrorType::DEVICE_NOT_SUPPORTED };
            return Err(Refusal::new(Subcode::AUTHORIZATION, error_type, denial.reason.as_str(), denial.message));
        }
    };
    // Directory-joined devices are already corporate through `facts.declared`.
    let ownership = admission.ownership;
    let store_kind = if enrollment_type.eq_ignore_ascii_case("Device") { CertStore::System } else { CertStore::User };
    let issued = issue(svc, &device, &csr, now, Some(&user.upn), user.policy.as_str(), None)?;
    let doc = provisioning(svc, &device, &issued, store_kind);

    let previous = state.store.enrollment(&device).await?;
    let mut enrollment = match previous.clone() {
        Some(mut e) => {
            // A device enrolling again (reset, re-joined): a fresh binding, same history.
            e.parent = None;
            e.push = None;
            e.unlock_token = None;
            e.bootstrap_token = None;
            e
        }
        None => Enrollment::new(device.clone(), now),
    };
    enrollment.state = EnrollmentState::Enrolled;
    enrollment.cert_sha256 = Some(issued.record.cert_sha256.clone());
    enrollment.enrolled_at = Some(now);
    enrollment.last_seen = Some(now);
    enrollment.updated_at = now;
    let mut inventory = mdm_core::Inventory { os_name: Some("Windows".into()), ..Default::default() };
    inventory.os_version = context_value(rst, "OSVersion").or_else(|| context_value(rst, "ApplicationVersion"));
    inventory.device_name = context_value(rst, "DeviceName");
    inventory.imei = context_value(rst, "IMEI");
    inventory.wifi_mac = context_value(rst, "MAC");
    inventory.enrolled_user = Some(user.upn.clone());
    inventory.ownership = Some(ownership.as_str().into());
    enrollment.inventory.merge(&inventory);
    let a = &mut enrollment.attributes;
    a.insert("upn".into(), json!(user.upn));
    a.insert("auth_policy".into(), json!(user.policy.as_str()));
    a.insert("enrollment_type".into(), json!(enrollment_type));
    a.insert("cert_store".into(), json!(store_kind.as_str()));
    a.insert("cert_serial".into(), json!(issued.record.serial));
    a.insert("cert_not_after".into(), json!(issued.record.not_after));
    a.insert("management_url".into(), json!(svc.url(MANAGEMENT_PATH)));
    for (key, item) in [("hw_dev_id", "HWDevID"), ("device_type", "DeviceType"), ("os_edition", "OSEdition")] {
        if let Some(v) = context_value(rst, item) {
            a.insert(key.into(), json!(v));
        }
    }
    a.insert("csr_subject".into(), json!(csr.subject));

    let event = state.events.event(
        EventType::DEVICE_ENROLLED,
        &device,
        None,
        json!({
            "auth_policy": user.policy.as_str(),
            "upn": user.upn,
            "enrollment_type": enrollment_type,
            "device_name": enrollment.inventory.device_name,
            "os_version": enrollment.inventory.os_version,
            "cert_sha256": issued.record.cert_sha256,
            "cert_not_after": issued.record.not_after,
            "re_enrollment": previous.is_some(),
            "trace_id": trace_id,
        }),
    );
    match state.store.record_windows_enrollment(&issued.record, &enrollment, None, &[event]).await? {
        WindowsRecord::Recorded => {}
        WindowsRecord::BindingChanged => return Err(Refusal::internal("an unconditional record reported a change")),
    }
    if let Some((kind, id)) = &admission.corporate_identifier {
        state.store.mark_corporate_identifier_enrolled(*kind, id, &device, now).await?;
    }
    tracing::info!(
        platform = "windows", device = %device, upn = %user.upn, cert_sha256 = %issued.record.cert_sha256,
        trace_id, "Windows device enrolled"
    );
    Ok(RequestSecurityTokenResponse { provisioning_doc: doc }.encode(rst.message_id.as_deref(), trace_id, now))
}

/// `RequestType` Renew: the device authenticates with its current certificate (TLS client
/// certificate, or a trusted proxy's header), which must be the one bound to a Windows
/// enrollment this service issued; a PKCS#7 request must be signed with it.
pub(crate) async fn renew_request(
    state: &AppState,
    rst: &RequestSecurityToken,
    headers: &HeaderMap,
    body: &[u8],
    conn: &ConnInfo,
    now: i64,
    trace_id: &str,
) -> Result<Vec<u8>, Refusal> {
    let svc = &state.windows_enroll;
    if !svc.config.renewal {
        return Err(not_eligible("renewal_disabled", "certificate renewal is not offered by this server"));
    }
    let identity = state.identity.verify(headers, body, conn, now).map_err(|f| {
        Refusal::generic(
            Subcode::AUTHENTICATION,
            f.reason,
            "renewal needs the current enrollment certificate as TLS client certificate",
        )
        .detail(f.detail)
    })?;
    let bound_to = state.store.enrollment_by_cert(&identity.fingerprint).await?;
    let device = match bound_to {
        Some(d) if d.platform() == Platform::Windows => d,
        _ => {
            return Err(not_eligible(
                "certificate_not_enrolled",
                "this certificate is not bound to an enrolled device",
            )
            .detail(format!("no Windows enrollment is bound to {}", identity.fingerprint)));
        }
    };
    let Some(current) = state.store.windows_certificate(&identity.fingerprint).await? else {
        return Err(not_eligible("certificate_not_issued_here", "this certificate was not issued by this server"));
    };
    if let Some(ctx) = context_value(rst, "DeviceID")
        && !ctx.eq_ignore_ascii_case(device.native())
    {
        return Err(not_eligible(
            "device_id_mismatch",
            format!("the request names device {ctx}, the certificate belongs to {}", device.native()),
        ));
    }
    let csr = read_csr(rst)?;
    if let Some(signers) = &csr.pkcs7_signers {
        let signed_by_current = signers
            .iter()
            .any(|s| s.to_der().map(|d| hex::encode(Sha256::digest(&d)) == identity.fingerprint).unwrap_or(false));
        if !signed_by_current {
            return Err(not_eligible(
                "renewal_signer_mismatch",
                "the renewal request is not signed with the certificate being renewed",
            ));
        }
    }
    let Some(mut enrollment) = state.store.enrollment(&device).await? else {
        return Err(not_eligible("certificate_not_enrolled", "this certificate is not bound to an enrolled device"));
    };
    let store_kind = match enrollment.attributes.get("cert_store").and_then(|v| v.as_str()) {
        Some("System") => CertStore::System,
        _ => CertStore::User,
    };
    let issued =
        issue(svc, &device, &csr, now, current.upn.as_deref(), &current.auth_policy, Some(&identity.fingerprint))?;
    let doc = provisioning(svc, &device, &issued, store_kind);
    enrollment.cert_sha256 = Some(issued.record.cert_sha256.clone());
    enrollment.last_seen = Some(now);
    enrollment.updated_at = now;
    enrollment.attributes.insert("cert_serial".into(), json!(issued.record.serial));
    enrollment.attributes.insert("cert_not_after".into(), json!(issued.record.not_after));
    let event = state.events.event(
        EventType::DEVICE_IDENTITY_RENEWED,
        &device,
        None,
        json!({
            "previous_sha256": identity.fingerprint,
            "sha256": issued.record.cert_sha256,
            "via": "wstep_renewal",
            "cert_not_after": issued.record.not_after,
        }),
    );
    match state
        .store
        .record_windows_enrollment(&issued.record, &enrollment, Some(&identity.fingerprint), &[event])
        .await?
    {
        WindowsRecord::Recorded => {}
        WindowsRecord::BindingChanged => {
            return Err(not_eligible("renewed_meanwhile", "this certificate was renewed or unenrolled meanwhile"));
        }
    }
    tracing::info!(
        platform = "windows", device = %device, previous = %identity.fingerprint,
        cert_sha256 = %issued.record.cert_sha256, trace_id, "Windows device certificate renewed"
    );
    Ok(RequestSecurityTokenResponse { provisioning_doc: doc }.encode(rst.message_id.as_deref(), trace_id, now))
}
