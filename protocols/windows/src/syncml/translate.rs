//! Normalised commands → SyncML commands for Windows (CONTRACT §6).
//!
//! The result is the command list as it will be sent, written as a SyncML fragment (the queued
//! payload). CmdIDs in it are placeholders: the session numbers every command it sends, so ids
//! stay unique within the session whatever was queued.

use mdm_core::{Command as Normalised, CommandError, Platform};

use super::message::{Command, Item, ItemCommand, Meta, decode_commands, encode_commands};

/// DevInfo and DevDetail nodes a `device_info` without `fields` asks for.
pub const DEFAULT_DEVICE_INFO_NODES: &[&str] = &[
    "./DevInfo/DevId",
    "./DevInfo/Man",
    "./DevInfo/Mod",
    "./DevInfo/Lang",
    "./DevInfo/DmV",
    "./DevDetail/SwV",
    "./DevDetail/HwV",
    "./DevDetail/FwV",
    "./DevDetail/OEM",
    "./DevDetail/DevTyp",
    "./DevDetail/Ext/Microsoft/OSPlatform",
    "./DevDetail/Ext/Microsoft/DeviceName",
    "./DevDetail/Ext/Microsoft/SMBIOSSerialNumber",
    "./DevDetail/Ext/Microsoft/TotalStorage",
    "./DevDetail/Ext/WLANMACAddress",
];

pub const REMOTE_LOCK: &str = "./Device/Vendor/MSFT/RemoteLock/Lock";
pub const REBOOT_NOW: &str = "./Device/Vendor/MSFT/Reboot/RebootNow";
pub const REMOTE_WIPE: &str = "./Device/Vendor/MSFT/RemoteWipe/doWipe";

/// Most nodes one `device_info` may name, and the longest node URI.
const MAX_FIELDS: usize = 64;
const MAX_URI: usize = 1024;
/// Largest `raw` SyncML payload, in bytes.
pub const MAX_RAW_PAYLOAD: usize = 1024 * 1024;

/// A normalised command as Windows will receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowsCommand {
    /// The SyncML command names, `+`-joined (`Get`, `Exec`, `Replace+Get`).
    pub request_type: String,
    pub commands: Vec<Command>,
}

impl WindowsCommand {
    /// The queued payload: the commands as a SyncML fragment.
    pub fn payload(&self) -> Vec<u8> {
        encode_commands(&self.commands).into_bytes()
    }

    fn new(commands: Vec<Command>) -> Self {
        let mut names: Vec<&str> = Vec::new();
        for c in &commands {
            if !names.contains(&c.name()) {
                names.push(c.name());
            }
        }
        WindowsCommand { request_type: names.join("+"), commands }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> CommandError {
    CommandError::Invalid { field, reason: reason.into() }
}

fn node_uri_ok(uri: &str) -> bool {
    uri.starts_with("./") && uri.len() <= MAX_URI && !uri.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn exec(uri: &str) -> Command {
    Command::Exec(ItemCommand {
        cmd_id: "1".into(),
        items: vec![Item { meta: Some(Meta::default().with("Format", "chr")), ..Item::target(uri) }],
        ..ItemCommand::default()
    })
}

/// Translates a normalised command, or says why Windows cannot carry it.
pub fn translate(command: &Normalised) -> Result<WindowsCommand, CommandError> {
    let unsupported =
        || CommandError::UnsupportedOnPlatform { platform: Platform::Windows, command: command.type_name() };
    let commands = match command {
        Normalised::DeviceInfo { fields } => {
            let nodes: Vec<&str> = match fields {
                None => DEFAULT_DEVICE_INFO_NODES.to_vec(),
                Some(f) if f.is_empty() => return Err(invalid("fields", "must name at least one node")),
                Some(f) if f.len() > MAX_FIELDS => {
                    return Err(invalid("fields", format!("at most {MAX_FIELDS} nodes")));
                }
                Some(f) => f.iter().map(String::as_str).collect(),
            };
            if let Some(bad) = nodes.iter().find(|n| !node_uri_ok(n)) {
                return Err(invalid("fields", format!("{bad:?} is not a node URI (./DevDetail/SwV, ...)")));
            }
            nodes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    Command::Get(ItemCommand {
                        cmd_id: (i + 1).to_string(),
                        items: vec![Item::target(n)],
                        ..ItemCommand::default()
                    })
                })
                .collect()
        }
        Normalised::Lock { pin, message, phone } => {
            // RemoteLock/Lock locks the screen now; it takes no PIN and shows no message.
            for (field, set) in [("pin", pin.is_some()), ("message", message.is_some()), ("phone", phone.is_some())] {
                if set {
                    return Err(invalid(field, "Windows RemoteLock/Lock takes no arguments"));
                }
            }
            vec![exec(REMOTE_LOCK)]
        }
        Normalised::Restart {} => vec![exec(REBOOT_NOW)],
        Normalised::Wipe { preserve_data_plan } => {
            if *preserve_data_plan == Some(true) {
                return Err(invalid("preserve_data_plan", "Windows RemoteWipe has no data plan to preserve"));
            }
            vec![exec(REMOTE_WIPE)]
        }
        Normalised::Raw { platform, payload } => {
            if *platform != Platform::Windows {
                return Err(invalid("platform", format!("a raw {platform} payload cannot go to a Windows device")));
            }
            let text = payload
                .as_str()
                .ok_or_else(|| invalid("payload", "a string of SyncML commands (<Get>…</Get><Exec>…</Exec>)"))?;
            if text.len() > MAX_RAW_PAYLOAD {
                return Err(invalid("payload", format!("longer than {MAX_RAW_PAYLOAD} bytes")));
            }
            let commands = decode_commands(text).map_err(|e| invalid("payload", e.to_string()))?;
            if commands.is_empty() {
                return Err(invalid("payload", "no SyncML command"));
            }
            if let Some(c) = commands.iter().flat_map(Command::walk).find(|c| {
                matches!(c, Command::Status(_) | Command::Results(_))
                    || matches!(c, Command::Alert(a) if a.code.0 >= 1200)
            }) {
                return Err(invalid("payload", format!("<{}> is the session's, not a command to send", c.name())));
            }
            commands
        }
        Normalised::SetSettings { settings } => super::settings::settings_commands(settings)?,
        Normalised::InstallApp { app, managed_config } => {
            super::settings::install_commands(app, managed_config.is_some())?
        }
        Normalised::ClearPasscode {} | Normalised::AppConfig { .. } => return Err(unsupported()),
    };
    Ok(WindowsCommand::new(commands))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tr(v: serde_json::Value) -> Result<WindowsCommand, CommandError> {
        translate(&serde_json::from_value(v).unwrap())
    }

    #[test]
    fn contract_commands() {
        let info = tr(json!({"type": "device_info"})).unwrap();
        assert_eq!(info.request_type, "Get");
        assert_eq!(info.commands.len(), DEFAULT_DEVICE_INFO_NODES.len());
        let lock = tr(json!({"type": "lock"})).unwrap();
        assert_eq!(lock.request_type, "Exec");
        assert!(String::from_utf8(lock.payload()).unwrap().contains(REMOTE_LOCK));
        assert!(String::from_utf8(tr(json!({"type": "restart"})).unwrap().payload()).unwrap().contains(REBOOT_NOW));
        assert!(String::from_utf8(tr(json!({"type": "wipe"})).unwrap().payload()).unwrap().contains(REMOTE_WIPE));
        let some = tr(json!({"type": "device_info", "fields": ["./DevDetail/SwV"]})).unwrap();
        assert_eq!(some.commands.len(), 1);
        // The payload decodes back to the same commands.
        assert_eq!(decode_commands(std::str::from_utf8(&info.payload()).unwrap()).unwrap(), info.commands);
    }

    #[test]
    fn refusals() {
        assert_eq!(tr(json!({"type": "clear_passcode"})).unwrap_err().code(), "unsupported_on_platform");
        assert_eq!(tr(json!({"type": "install_app", "app": "x"})).unwrap_err().code(), "invalid_command");
        assert_eq!(
            tr(json!({"type": "app_config", "app": "x", "config": {}})).unwrap_err().code(),
            "unsupported_on_platform"
        );
        let s = tr(json!({"type": "set_settings", "settings": {"camera_disabled": true}})).unwrap();
        assert_eq!(s.request_type, "Replace");
        assert_eq!(tr(json!({"type": "lock", "pin": "123456"})).unwrap_err().code(), "invalid_command");
        assert_eq!(
            tr(json!({"type": "device_info", "fields": ["DevDetail/SwV"]})).unwrap_err().code(),
            "invalid_command"
        );
        assert_eq!(tr(json!({"type": "device_info", "fields": []})).unwrap_err().code(), "invalid_command");
        assert_eq!(
            tr(json!({"type": "raw", "platform": "apple", "payload": "<Get/>"})).unwrap_err().code(),
            "invalid_command"
        );
        for bad in [
            json!(42),
            json!("<Get><CmdID>1</CmdID>"),
            json!(""),
            json!("<Foo/>"),
            json!(
                "<Status><CmdID>1</CmdID><MsgRef>1</MsgRef><CmdRef>1</CmdRef><Cmd>Get</Cmd><Data>200</Data></Status>"
            ),
        ] {
            assert_eq!(
                tr(json!({"type": "raw", "platform": "windows", "payload": bad})).unwrap_err().code(),
                "invalid_command",
                "{bad}"
            );
        }
        let raw = tr(json!({"type": "raw", "platform": "windows", "payload":
            "<Replace><CmdID>9</CmdID><Item><Target><LocURI>./Vendor/MSFT/Policy/Config/Camera/AllowCamera</LocURI></Target><Meta><Format xmlns=\"syncml:metinf\">int</Format></Meta><Data>0</Data></Item></Replace><Get><CmdID>10</CmdID><Item><Target><LocURI>./DevDetail/SwV</LocURI></Target></Item></Get>"}))
        .unwrap();
        assert_eq!(raw.request_type, "Replace+Get");
    }
}
