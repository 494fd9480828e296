//! The device side of declarative device management: the `DeclarativeManagement` check-ins a
//! device sends to synchronise (`tokens`, `declaration-items`, `declaration/…`) and to report
//! `status`. Replies are read as Apple documents them, independently of the gateway's code.

use plist::{Dictionary, Value};
use serde_json::Value as Json;

use super::device::{AppleDevice, DeviceError, Reply};
use super::messages::UserChannel;

/// The manifest keys and the path segment a device fetches each class under.
const CLASSES: [(&str, &str); 4] = [
    ("Activations", "activation"),
    ("Assets", "asset"),
    ("Configurations", "configuration"),
    ("Management", "management"),
];

/// The outcome of a synchronisation.
#[derive(Debug, Clone, PartialEq)]
pub struct DdmSync {
    /// The server's `DeclarationsToken` now.
    pub token: String,
    /// The `Timestamp` from the `tokens` answer.
    pub timestamp: String,
    /// False when the token was the one the device already had (nothing fetched).
    pub changed: bool,
    /// Every declaration fetched, as JSON.
    pub declarations: Vec<Json>,
}

fn bad(what: &str, reply: &Reply) -> DeviceError {
    DeviceError::BadCommand(format!("{what}: HTTP {} {}", reply.status, String::from_utf8_lossy(&reply.body)))
}

fn json_of(what: &str, reply: &Reply) -> Result<Json, DeviceError> {
    if reply.status != 200 {
        return Err(bad(what, reply));
    }
    serde_json::from_slice(&reply.body).map_err(|e| DeviceError::BadCommand(format!("{what}: not JSON: {e}")))
}

impl AppleDevice {
    /// A `DeclarativeManagement` check-in for `endpoint`, with `Data` when given.
    pub fn declarative_management_message(
        &self,
        endpoint: &str,
        data: Option<Vec<u8>>,
        user: Option<&UserChannel>,
    ) -> Vec<u8> {
        let mut extra = Dictionary::new();
        extra.insert("Endpoint".into(), endpoint.into());
        if let Some(d) = data {
            extra.insert("Data".into(), Value::Data(d));
        }
        self.checkin_message("DeclarativeManagement", user, extra)
    }

    /// Sends one `DeclarativeManagement` check-in; the reply as it came.
    pub async fn ddm_request(
        &self,
        endpoint: &str,
        data: Option<Vec<u8>>,
        user: Option<&UserChannel>,
    ) -> Result<Reply, DeviceError> {
        self.send_checkin(self.declarative_management_message(endpoint, data, user)).await
    }

    /// What a device does on a `DeclarativeManagement` command: the tokens (from the command's
    /// `Data` when it has them, else from a `tokens` request); if the `DeclarationsToken`
    /// differs from `known_token`, the manifest and then every declaration in it.
    pub async fn ddm_sync(
        &self,
        command_data: Option<&[u8]>,
        known_token: Option<&str>,
        user: Option<&UserChannel>,
    ) -> Result<DdmSync, DeviceError> {
        let tokens = match command_data {
            Some(d) => serde_json::from_slice::<Json>(d)
                .map_err(|e| DeviceError::BadCommand(format!("command Data is not JSON: {e}")))?,
            None => json_of("tokens", &self.ddm_request("tokens", None, user).await?)?,
        };
        let sync = &tokens["SyncTokens"];
        let token = sync["DeclarationsToken"]
            .as_str()
            .ok_or_else(|| DeviceError::BadCommand(format!("no SyncTokens.DeclarationsToken in {tokens}")))?;
        let timestamp = sync["Timestamp"].as_str().unwrap_or_default().to_owned();
        if Some(token) == known_token {
            return Ok(DdmSync { token: token.to_owned(), timestamp, changed: false, declarations: Vec::new() });
        }
        let items = json_of("declaration-items", &self.ddm_request("declaration-items", None, user).await?)?;
        let token = items["DeclarationsToken"]
            .as_str()
            .ok_or_else(|| DeviceError::BadCommand(format!("no DeclarationsToken in {items}")))?
            .to_owned();
        let mut declarations = Vec::new();
        for (key, class) in CLASSES {
            let list = items["Declarations"][key]
                .as_array()
                .ok_or_else(|| DeviceError::BadCommand(format!("no Declarations.{key} array in {items}")))?;
            for item in list {
                let identifier = item["Identifier"].as_str().unwrap_or_default();
                let endpoint = format!("declaration/{class}/{identifier}");
                let d = json_of(&endpoint, &self.ddm_request(&endpoint, None, user).await?)?;
                if d["ServerToken"] != item["ServerToken"] {
                    return Err(DeviceError::BadCommand(format!(
                        "{endpoint}: ServerToken {} differs from the manifest's {}",
                        d["ServerToken"], item["ServerToken"]
                    )));
                }
                declarations.push(d);
            }
        }
        Ok(DdmSync { token, timestamp, changed: true, declarations })
    }

    /// Sends a status report (`status` endpoint, the report JSON as `Data`).
    pub async fn ddm_status(&self, report: &Json, user: Option<&UserChannel>) -> Result<Reply, DeviceError> {
        let data = serde_json::to_vec(report).map_err(|e| DeviceError::BadCommand(e.to_string()))?;
        self.ddm_request("status", Some(data), user).await
    }
}
