//! The identifiers every check-in message and command report carries, and how they become a
//! gateway [`DeviceId`].
//!
//! The resolution follows NanoMDM's normaliser so that ids agree with a NanoMDM-backed
//! deployment: the device channel is the `UDID` (or, for User Enrollment, the `EnrollmentID`);
//! a user channel appends `UserID` (or `EnrollmentUserID`), except on Shared iPad where `UserID`
//! is the constant `FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF` and the `UserShortName` (the Managed
//! Apple Account) names the user instead. This module does not look anything up: whether an
//! enrollment is known is the gateway's business.

use mdm_core::{DeviceId, Platform};
use plist::Dictionary;
use serde_json::{Map, Value as Json};

use crate::DecodeError;
use crate::fields::opt_string;

/// The `UserID` every Shared iPad user channel reports; it says "no authentication", not who.
pub const SHARED_IPAD_USER_ID: &str = "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF";

/// The enrollment identifiers of one message. Empty strings are read as absent, as NanoMDM does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnrollmentIds {
    pub udid: Option<String>,
    pub enrollment_id: Option<String>,
    pub user_id: Option<String>,
    pub enrollment_user_id: Option<String>,
    pub user_short_name: Option<String>,
    pub user_long_name: Option<String>,
}

/// What kind of channel a message arrived on (NanoMDM's `EnrollType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EnrollmentType {
    /// A device channel identified by UDID.
    Device,
    /// A macOS user channel (`UDID` + `UserID`).
    User,
    /// The device channel of a User Enrollment (`EnrollmentID`, no UDID).
    UserEnrollmentDevice,
    /// The user channel of a User Enrollment (`EnrollmentID` + `EnrollmentUserID`).
    UserEnrollment,
    /// A Shared iPad user channel (`UserID` is [`SHARED_IPAD_USER_ID`]).
    SharedIpad,
}

impl EnrollmentType {
    pub fn as_str(self) -> &'static str {
        match self {
            EnrollmentType::Device => "device",
            EnrollmentType::User => "user",
            EnrollmentType::UserEnrollmentDevice => "user_enrollment_device",
            EnrollmentType::UserEnrollment => "user_enrollment",
            EnrollmentType::SharedIpad => "shared_ipad",
        }
    }
}

impl EnrollmentIds {
    /// Reads the identifier keys of a check-in message or report. Wrong types are errors;
    /// absence is not (whether an identifier is required is decided by [`Self::require_device`]).
    pub(crate) fn from_dict(d: &Dictionary) -> Result<Self, DecodeError> {
        let get = |k| opt_string(d, k).map(|s| s.filter(|s| !s.is_empty()));
        Ok(EnrollmentIds {
            udid: get("UDID")?,
            enrollment_id: get("EnrollmentID")?,
            user_id: get("UserID")?,
            enrollment_user_id: get("EnrollmentUserID")?,
            user_short_name: get("UserShortName")?,
            user_long_name: get("UserLongName")?,
        })
    }

    /// Decoding refuses messages whose identifiers do not resolve to a device id: the gateway
    /// could not route them.
    pub(crate) fn require_device(self) -> Result<Self, DecodeError> {
        self.device_id()?;
        Ok(self)
    }

    fn device_channel_native(&self) -> Result<&str, DecodeError> {
        self.udid.as_deref().or(self.enrollment_id.as_deref()).ok_or(DecodeError::NoDeviceIdentifier)
    }

    /// The user part of a user channel id, `None` on a device channel.
    fn user_channel_native(&self) -> Result<Option<&str>, DecodeError> {
        // UDID wins over EnrollmentID, and only the user key of the same family counts: a
        // UDID message with an EnrollmentUserID is a device channel (NanoMDM does the same).
        if self.udid.is_some() {
            return match self.user_id.as_deref() {
                None => Ok(None),
                Some(SHARED_IPAD_USER_ID) => {
                    self.user_short_name.as_deref().map(Some).ok_or(DecodeError::NoSharedIpadUser)
                }
                Some(uid) => Ok(Some(uid)),
            };
        }
        if self.enrollment_id.is_some() {
            return Ok(self.enrollment_user_id.as_deref());
        }
        Err(DecodeError::NoDeviceIdentifier)
    }

    /// `apple:<UDID or EnrollmentID>` for the device channel; `apple:<…>:<user>` for a user
    /// channel, where the user is `UserID`, `EnrollmentUserID`, or on Shared iPad the
    /// `UserShortName`.
    pub fn device_id(&self) -> Result<DeviceId, DecodeError> {
        let device = self.device_channel_native()?;
        let id = match self.user_channel_native()? {
            Some(user) => DeviceId::new(Platform::Apple, &[device, user])?,
            None => DeviceId::new(Platform::Apple, &[device])?,
        };
        Ok(id)
    }

    /// The device channel this message belongs to (itself when it is a device channel).
    pub fn device_channel_id(&self) -> Result<DeviceId, DecodeError> {
        Ok(DeviceId::new(Platform::Apple, &[self.device_channel_native()?])?)
    }

    /// True when the message came over a user channel. A Shared iPad user channel without a
    /// `UserShortName` is still a user channel; [`Self::device_id`] refuses it.
    pub fn is_user_channel(&self) -> bool {
        if self.udid.is_some() {
            self.user_id.is_some()
        } else {
            self.enrollment_id.is_some() && self.enrollment_user_id.is_some()
        }
    }

    /// True for User Enrollment (BYOD): the device is known only by its `EnrollmentID`.
    pub fn is_user_enrollment(&self) -> bool {
        self.enrollment_id.is_some()
    }

    /// The channel kind, or `None` when nothing identifies the device.
    pub fn enrollment_type(&self) -> Option<EnrollmentType> {
        if self.udid.is_some() {
            Some(match self.user_id.as_deref() {
                None => EnrollmentType::Device,
                Some(SHARED_IPAD_USER_ID) => EnrollmentType::SharedIpad,
                Some(_) => EnrollmentType::User,
            })
        } else if self.enrollment_id.is_some() {
            Some(if self.enrollment_user_id.is_some() {
                EnrollmentType::UserEnrollment
            } else {
                EnrollmentType::UserEnrollmentDevice
            })
        } else {
            None
        }
    }

    /// The identifiers as a JSON object for event data (present keys only).
    pub(crate) fn to_json(&self) -> Json {
        let mut m = Map::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                m.insert(k.to_owned(), Json::String(v.clone()));
            }
        };
        put("udid", &self.udid);
        put("enrollment_id", &self.enrollment_id);
        put("user_id", &self.user_id);
        put("enrollment_user_id", &self.enrollment_user_id);
        put("user_short_name", &self.user_short_name);
        put("user_long_name", &self.user_long_name);
        if let Some(t) = self.enrollment_type() {
            m.insert("enrollment_type".into(), Json::String(t.as_str().into()));
        }
        Json::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(
        udid: Option<&str>,
        eid: Option<&str>,
        uid: Option<&str>,
        euid: Option<&str>,
        short: Option<&str>,
    ) -> EnrollmentIds {
        EnrollmentIds {
            udid: udid.map(Into::into),
            enrollment_id: eid.map(Into::into),
            user_id: uid.map(Into::into),
            enrollment_user_id: euid.map(Into::into),
            user_short_name: short.map(Into::into),
            user_long_name: None,
        }
    }

    #[test]
    fn resolves_like_nanomdm() {
        let cases = [
            (ids(Some("U1"), None, None, None, None), "apple:U1", EnrollmentType::Device),
            (ids(Some("U1"), None, Some("501-GUID"), None, Some("jo")), "apple:U1:501-GUID", EnrollmentType::User),
            (
                ids(Some("U1"), None, Some(SHARED_IPAD_USER_ID), None, Some("jo@school.example")),
                "apple:U1:jo@school.example",
                EnrollmentType::SharedIpad,
            ),
            (ids(None, Some("E1"), None, None, None), "apple:E1", EnrollmentType::UserEnrollmentDevice),
            (ids(None, Some("E1"), None, Some("EU1"), None), "apple:E1:EU1", EnrollmentType::UserEnrollment),
            // UDID takes precedence over EnrollmentID, and EnrollmentUserID only counts without UDID.
            (ids(Some("U1"), Some("E1"), None, Some("EU1"), None), "apple:U1", EnrollmentType::Device),
        ];
        for (ids, want, kind) in cases {
            assert_eq!(ids.device_id().unwrap().as_str(), want, "{ids:?}");
            assert_eq!(ids.enrollment_type(), Some(kind));
            assert_eq!(ids.is_user_channel(), want.matches(':').count() == 2);
            assert!(want.starts_with(ids.device_channel_id().unwrap().as_str()));
        }
    }

    #[test]
    fn refuses_unidentified() {
        let none = EnrollmentIds::default();
        assert!(matches!(none.device_id(), Err(DecodeError::NoDeviceIdentifier)));
        assert!(matches!(none.device_channel_id(), Err(DecodeError::NoDeviceIdentifier)));
        assert_eq!(none.enrollment_type(), None);
        let shared = ids(Some("U1"), None, Some(SHARED_IPAD_USER_ID), None, None);
        assert!(matches!(shared.device_id(), Err(DecodeError::NoSharedIpadUser)));
        assert_eq!(shared.device_channel_id().unwrap().as_str(), "apple:U1");
        let spaced = ids(Some("U 1"), None, None, None, None);
        assert_eq!(spaced.device_id().unwrap_err().reason(), "bad_device_id");
    }
}
