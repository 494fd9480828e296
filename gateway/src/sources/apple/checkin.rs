//! Check-in messages (`application/x-apple-aspen-mdm-checkin`).

use http::StatusCode;
use mdm_apple::CheckinMessage;
use mdm_core::{EventType, Inventory};

use super::{CHECKIN_CONTENT_TYPE, Reject, bound_enrollment, device_ids, enrollment_type, remember_identity};
use crate::AppState;
use crate::http_util::{Reply, empty, text, with_type};
use crate::identity::DeviceIdentity;
use crate::push;
use crate::store::{Enrollment, EnrollmentState, PushInfo};

/// Answers for check-ins this gateway does not serve yet; devices retry these later.
const NOT_CONFIGURED: StatusCode = StatusCode::NOT_IMPLEMENTED;

pub(super) async fn handle(
    state: &AppState,
    identity: &DeviceIdentity,
    body: &[u8],
    now: i64,
) -> Result<(&'static str, Reply), Reject> {
    let msg = mdm_apple::decode_checkin(body).map_err(|e| Reject::bad_request(e.reason(), e.to_string()))?;
    let (id, channel) = device_ids(msg.ids())?;
    let data = event_data(&msg);
    let raw_event = |t: EventType| state.events.with_raw(t, &id, None, data.clone(), CHECKIN_CONTENT_TYPE, body);

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
            let mut enrollment = state.store.enrollment(&id).await?.unwrap_or_else(|| Enrollment::new(id.clone(), now));
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
            let mut enrollment = bound_enrollment(state, identity, &channel, now).await?;
            enrollment.bootstrap_token = s.bootstrap_token.clone();
            enrollment.updated_at = now;
            state.store.save_enrollment(&enrollment, &[raw_event(EventType::DEVICE_BOOTSTRAP_TOKEN_SET)]).await?;
            Ok(("SetBootstrapToken", empty(StatusCode::OK)))
        }
        CheckinMessage::GetBootstrapToken(_) => {
            let enrollment = bound_enrollment(state, identity, &channel, now).await?;
            state.store.append_events(&[raw_event(EventType::DEVICE_BOOTSTRAP_TOKEN_REQUESTED)]).await?;
            let body = mdm_apple::encode_bootstrap_token_response(enrollment.bootstrap_token.as_deref());
            Ok(("GetBootstrapToken", with_type(StatusCode::OK, "application/xml", body)))
        }
        CheckinMessage::DeclarativeManagement(_) => {
            bound_enrollment(state, identity, &channel, now).await?;
            state.store.append_events(&[raw_event(EventType::DEVICE_DECLARATIVE_MANAGEMENT)]).await?;
            Ok((
                "DeclarativeManagement",
                text(NOT_CONFIGURED, "declarative management is not configured on this gateway\n"),
            ))
        }
        CheckinMessage::GetToken(_) => {
            bound_enrollment(state, identity, &channel, now).await?;
            state.store.append_events(&[raw_event(EventType::DEVICE_TOKEN_REQUESTED)]).await?;
            Ok(("GetToken", text(NOT_CONFIGURED, "no token services are configured on this gateway\n")))
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
