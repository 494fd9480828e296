//! `Authenticate`: the first check-in of an enrollment, before any push token exists.
//!
//! Carries hardware identity. On iOS before 9 and on User Enrollment most of it is absent, so
//! only `Topic` is required here; Apple's "required" `DeviceName`/`Model`/`ModelName` are macOS
//! only. Accepting or refusing the enrollment is the gateway's decision, not this type's.

use plist::Dictionary;
use serde_json::{Map, Value as Json};

use crate::fields::{opt_string, req_string};
use crate::{DecodeError, EnrollmentIds, os_name};

#[derive(Debug, Clone, PartialEq)]
pub struct Authenticate {
    pub udid: Option<String>,
    /// User Enrollment's per-enrollment device id (iOS 13+, macOS 10.15+); replaces the UDID.
    pub enrollment_id: Option<String>,
    pub topic: String,
    pub serial_number: Option<String>,
    pub model: Option<String>,
    pub model_name: Option<String>,
    pub product_name: Option<String>,
    pub os_version: Option<String>,
    pub build_version: Option<String>,
    pub device_name: Option<String>,
    pub imei: Option<String>,
    pub meid: Option<String>,
    pub ids: EnrollmentIds,
    /// The whole message as decoded, including keys this type does not name.
    pub dict: Dictionary,
}

impl Authenticate {
    pub(crate) fn from_dict(dict: Dictionary, ids: EnrollmentIds) -> Result<Self, DecodeError> {
        let s = |k| opt_string(&dict, k);
        Ok(Authenticate {
            udid: ids.udid.clone(),
            enrollment_id: ids.enrollment_id.clone(),
            topic: req_string(&dict, "Topic")?,
            serial_number: s("SerialNumber")?,
            model: s("Model")?,
            model_name: s("ModelName")?,
            product_name: s("ProductName")?,
            os_version: s("OSVersion")?,
            build_version: s("BuildVersion")?,
            device_name: s("DeviceName")?,
            imei: s("IMEI")?,
            meid: s("MEID")?,
            ids,
            dict,
        })
    }

    pub(crate) fn event_fields(&self, m: &mut Map<String, Json>) {
        m.insert("topic".into(), self.topic.clone().into());
        let inv = self.inventory();
        if let Ok(Json::Object(fields)) = serde_json::to_value(&inv) {
            m.extend(fields);
        }
    }

    /// The hardware identity this message reports.
    pub fn inventory(&self) -> mdm_core::Inventory {
        mdm_core::Inventory {
            serial_number: self.serial_number.clone(),
            udid: self.udid.clone(),
            model: self.model.clone(),
            model_name: self.model_name.clone(),
            product_name: self.product_name.clone(),
            os_name: os_name::infer(self.product_name.as_deref(), self.model.as_deref(), self.os_version.as_deref())
                .map(Into::into),
            os_version: self.os_version.clone(),
            build_version: self.build_version.clone(),
            device_name: self.device_name.clone(),
            imei: self.imei.clone(),
            meid: self.meid.clone(),
            manufacturer: Some("Apple".into()),
            ..Default::default()
        }
    }
}
