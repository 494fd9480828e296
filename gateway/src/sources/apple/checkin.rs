//! Check-in messages (`application/x-apple-aspen-mdm-checkin`).

use http::StatusCode;
use mdm_apple::CheckinMessage;
use mdm_core::{DeviceId, EventType, Inventory, Platform};

use super::{CHECKIN_CONTENT_TYPE, Reject, bound_enrollment, ddm, device_ids, enrollment_type, remember_identity};
use crate::AppState;
use crate::enrollment_gate::{self, EnrollmentFacts};
use crate::http_util::{Reply, empty, text, with_type};
use crate::identity::DeviceIdentity;
use crate::push;
use crate::sealing::Purpose;
use crate::store::{Enrollment, EnrollmentState, PushInfo};

/// The answer to a `GetToken` for a service type no token service is configured for.
const NOT_CONFIGURED: StatusCode = StatusCode::NOT_IMPLEMENTED;

/// Bootstrap tokens belong to the device channel (Apple: `userchannel: false`); a user channel
/// asking is refused rather than answered with the device's token.
fn device_channel_only(id: &DeviceId, channel: &DeviceId, what: &str) -> Result<(), Reject> {
    if id == channel {
        return Ok(());
    }
    Err(Reject::bad_request(
        "device_channel_only",
        format!("{what} is for the device channel, not the user channel {id}"),
    ))
}

pub(super) async fn handle(
    state: &AppState,
    identity: &DeviceIdentity,
    body: &[u8],
    now: i64,
) -> Result<(&'static str, Reply), Reject> {
    let msg = mdm_apple::decode_checkin(body).map_err(|e| Reject::bad_request(e.reason(), e.to_string()))?;
    let (id, channel) = device_ids(msg.ids())?;
    let data = event_data(&msg);
    let raw_event_with =
        |t: EventType, data: serde_json::Value| state.events.with_raw(t, &id, None, data, CHECKIN_CONTENT_TYPE, body);
    let raw_event = |t: EventType| raw_event_with(t, data.clone());

    match &msg {
        CheckinMessage::Authenticate(_) => {
            if id != channel {
                return Err(Reject::bad_request("authenticate_on_user_channel", "Authenticate names a user"));
            }
            if let Some(other) = state.store.enrollment_by_cert(&identity.fingerprint).await?
                && other != id
            {
                return Err(Reject::identity(
                    "certificate_bound_elsewhere",
                    format!("certificate is bound to {other}"),
                ));
            }
            // The enrollment gate ([enrollment]); a refused device gets 403 and only the event is stored.
            let inventory = msg.inventory().unwrap_or_default();
            let facts = EnrollmentFacts {
                platform: Some(Platform::Apple),
                device_id: Some(id.clone()),
                user: None,
                os_version: inventory.os_version.clone(),
                serial_number: inventory.serial_number.clone(),
                imei: inventory.imei.clone(),
                // User Enrollment is Apple's enrollment for personal devices.
                declared_personal: msg.ids().enrollment_id.is_some(),
            };
            let admission = match state.gate.check(state.store.as_ref(), &facts).await.map_err(Reject::internal)? {
                Ok(a) => a,
                Err(denial) => {
                    let event = enrollment_gate::denied_event(&state.events, &id, &facts, &denial);
                    state.store.append_events(&[event]).await?;
                    return Err(Reject::forbidden(denial.reason.as_str(), denial.message));
                }
            };
            let mut enrollment = state.store.enrollment(&id).await?.unwrap_or_else(|| Enrollment::new(id.clone(), now));
            enrollment.inventory.ownership = Some(admission.ownership.as_str().into());
            // (Re-)authentication starts the enrollment over: reachable again only after TokenUpdate.
            enrollment.state = EnrollmentState::Authenticated;
            enrollment.parent = None;
            remember_identity(&mut enrollment, identity);
            enrollment.attributes.insert("enrollment_type".into(), enrollment_type(msg.ids()).into());
            let mut events = vec![raw_event(EventType::DEVICE_AUTHENTICATED)];
            if let Some(inv) = msg.inventory().filter(|i| !i.is_empty()) {
                merge_inventory(state, &mut enrollment, &inv, &mut events);
            }
            enrollment.last_seen = Some(now);
            enrollment.updated_at = now;
            state.store.save_enrollment(&enrollment, &events).await?;
            if let Some((kind, identifier)) = &admission.corporate_identifier {
                state.store.mark_corporate_identifier_enrolled(*kind, identifier, &id, now).await?;
            }
            Ok(("Authenticate", empty(StatusCode::OK)))
        }
        CheckinMessage::TokenUpdate(t) => {
            let parent = bound_enrollment(state, identity, &channel, now).await?;
            let mut enrollment = if id == channel {
                parent
            } else {
                if parent.state != EnrollmentState::Enrolled {
                    return Err(Reject::bad_request(
                        "device_channel_not_enrolled",
                        format!("{channel} has no TokenUpdate yet"),
                    ));
                }
                let mut e = state.store.enrollment(&id).await?.unwrap_or_else(|| Enrollment::new(id.clone(), now));
                e.parent = Some(channel.clone());
                e.attributes.insert("enrollment_type".into(), enrollment_type(msg.ids()).into());
                e
            };
            enrollment.push =
                Some(PushInfo { token: t.token.clone(), magic: t.push_magic.clone(), topic: t.topic.clone() });
            // A TokenUpdate is the device's word that this token works: pushes are allowed again
            // after APNs refused the previous one.
            for key in [push::ATTR_TOKEN_INVALID, push::ATTR_TOKEN_INVALID_REASON, push::ATTR_TOKEN_INVALID_AT] {
                enrollment.attributes.remove(key);
            }
            if let Some(unlock) = &t.unlock_token {
                enrollment.unlock_token = Some(unlock.clone());
            }
            for (key, value) in [("user_short_name", &t.ids.user_short_name), ("user_long_name", &t.ids.user_long_name)]
            {
                if let Some(v) = value {
                    enrollment.attributes.insert(key.into(), v.clone().into());
                }
            }
            enrollment.attributes.insert("awaiting_configuration".into(), t.awaiting_configuration.into());
            let first = enrollment.state != EnrollmentState::Enrolled;
            enrollment.state = EnrollmentState::Enrolled;
            if first {
                enrollment.enrolled_at = Some(now);
            }
            enrollment.last_seen = Some(now);
            enrollment.updated_at = now;
            let t = if first { EventType::DEVICE_ENROLLED } else { EventType::DEVICE_TOKEN_UPDATED };
            state.store.save_enrollment(&enrollment, &[raw_event(t)]).await?;
            Ok(("TokenUpdate", empty(StatusCode::OK)))
        }
        CheckinMessage::CheckOut(_) => {
            bound_enrollment(state, identity, &channel, now).await?;
            state
                .store
                .set_state_with_children(
                    &id,
                    EnrollmentState::Unenrolled,
                    now,
                    &[raw_event(EventType::DEVICE_UNENROLLED)],
                )
                .await?;
            Ok(("CheckOut", empty(StatusCode::OK)))
        }
        CheckinMessage::UserAuthenticate(_) => {
            bound_enrollment(state, identity, &channel, now).await?;
            state.store.append_events(&[raw_event(EventType::DEVICE_USER_AUTHENTICATE)]).await?;
            // 410 tells the device that no user channel authentication is wanted here; it then
            // goes on without one. (Apple: "respond with 410 Gone to decline".)
            Ok(("UserAuthenticate", empty(StatusCode::GONE)))
        }
        CheckinMessage::SetBootstrapToken(s) => {
            device_channel_only(&id, &channel, "SetBootstrapToken")?;
            bound_enrollment(state, identity, &channel, now).await?;
            // Absent or empty: forget the stored token (Apple's schema says both mean "remove").
            let sealed = match s.bootstrap_token.as_deref().filter(|t| !t.is_empty()) {
                Some(token) => Some(state.sealer.seal(Purpose::BootstrapToken, &id, token).map_err(Reject::internal)?),
                None => None,
            };
            let mut data = data.clone();
            data["escrowed"] = sealed.is_some().into();
            // No `raw`: the message carries the token, which must not reach the store readable.
            let event = state.events.event(EventType::DEVICE_BOOTSTRAP_TOKEN_SET, &id, None, data);
            if !state.store.set_bootstrap_token(&id, sealed.as_deref(), now, &[event]).await? {
                return Err(Reject::bad_request("not_enrolled", format!("{id} has no enrollment")));
            }
            Ok(("SetBootstrapToken", empty(StatusCode::OK)))
        }
        CheckinMessage::GetBootstrapToken(_) => {
            device_channel_only(&id, &channel, "GetBootstrapToken")?;
            let enrollment = bound_enrollment(state, identity, &channel, now).await?;
            // The binding check above makes this the requesting device's own row; the device id
            // in the associated data makes a value copied from another row fail to open.
            let token = match &enrollment.bootstrap_token {
                Some(sealed) => Some(state.sealer.open(Purpose::BootstrapToken, &id, sealed).map_err(|e| Reject {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    reason: "bootstrap_token_unreadable",
                    detail: format!("the stored bootstrap token of {id} does not open: {e}"),
                    identity: false,
                })?),
                None => None,
            };
            let mut data = data.clone();
            data["escrowed"] = token.is_some().into();
            state.store.append_events(&[raw_event_with(EventType::DEVICE_BOOTSTRAP_TOKEN_REQUESTED, data)]).await?;
            let body = mdm_apple::encode_bootstrap_token_response(token.as_deref());
            Ok(("GetBootstrapToken", with_type(StatusCode::OK, "application/xml", body)))
        }
        CheckinMessage::DeclarativeManagement(dm) => {
            bound_enrollment(state, identity, &channel, now).await?;
            let reply = ddm::handle(state, &id, dm, data.clone(), raw_event_with).await?;
            Ok(("DeclarativeManagement", reply))
        }
        CheckinMessage::GetToken(g) => {
            bound_enrollment(state, identity, &channel, now).await?;
            let service = &g.token_service_type;
            let outcome = state.token_services.token(service, &id, g.parameters_json()).await;
            let mut data = data.clone();
            let (reply, result) = match &outcome {
                Ok(Some(token)) => (
                    with_type(StatusCode::OK, "application/xml", mdm_apple::encode_get_token_response(token)),
                    "served",
                ),
                Ok(None) => {
                    tracing::info!(device = %id, token_service_type = %service, "GetToken for a service type that is not configured");
                    (
                        text(
                            NOT_CONFIGURED,
                            format!("no token service is configured for TokenServiceType {service:?}\n"),
                        ),
                        "not_configured",
                    )
                }
                Err(e) => {
                    tracing::warn!(device = %id, token_service_type = %service, reason = e.reason(), error = %e, "token service failed");
                    data["reason"] = e.reason().into();
                    (text(StatusCode::BAD_GATEWAY, format!("{}: the token service failed\n", e.reason())), "failed")
                }
            };
            data["outcome"] = result.into();
            // No `raw`: TokenParameters may hold a SecurityToken.
            let event = state.events.event(EventType::DEVICE_TOKEN_REQUESTED, &id, None, data);
            state.store.append_events(&[event]).await?;
            Ok(("GetToken", reply))
        }
        CheckinMessage::Unknown { message_type, .. } => Err(Reject::bad_request(
            "unsupported_message_type",
            format!("MessageType {message_type:?} is not supported"),
        )),
    }
}

fn event_data(msg: &CheckinMessage) -> serde_json::Value {
    let mut data = msg.event_data();
    if let Some(obj) = data.as_object_mut() {
        obj.insert("enrollment_type".into(), enrollment_type(msg.ids()).into());
    }
    data
}

/// Merges a partial inventory and adds a `device.inventory` event with the full result.
pub(super) fn merge_inventory(
    state: &AppState,
    enrollment: &mut Enrollment,
    newer: &Inventory,
    events: &mut Vec<mdm_core::Event>,
) {
    enrollment.inventory.merge(newer);
    let data = serde_json::to_value(&enrollment.inventory).unwrap_or_default();
    events.push(state.events.event(EventType::DEVICE_INVENTORY, &enrollment.device_id, None, data));
}
