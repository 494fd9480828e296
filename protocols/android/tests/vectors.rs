//! Decodes and normalises every Pub/Sub push vector: the shared synthesized captures
//! (`$MDM_VECTORS/android/captures/synth__push_*.json`) and this crate's own
//! (`tests/vectors/push_*.json`, written from the AMAPI discovery document).

use std::path::{Path, PathBuf};

use mdm_android::{Notification, PushMessage};

/// The shared vectors: `MDM_VECTORS`, else `../../../shared/vectors` from this crate.
fn shared_vectors() -> Option<PathBuf> {
    let p = std::env::var_os("MDM_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors"));
    p.is_dir().then_some(p)
}

fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(prefix) && n.ends_with(".json")
        })
        .collect();
    v.sort();
    v
}

/// Decodes a vector file end to end: envelope, notification, emissions.
fn summary(path: &Path) -> (PushMessage, Notification, Vec<mdm_android::Emission>) {
    let body = std::fs::read(path).unwrap();
    let msg = PushMessage::decode(&body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let n = Notification::decode(&msg).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let out = n.emissions().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (msg, n, out)
}

fn types(out: &[mdm_android::Emission]) -> Vec<&str> {
    out.iter().map(|e| e.event_type.as_str()).collect()
}

#[test]
fn shared_synth_push_captures() {
    let Some(dir) = shared_vectors() else {
        eprintln!("skipping: shared vectors not found (set MDM_VECTORS)");
        return;
    };
    let dir = dir.join("android/captures");
    let all = files(&dir, "synth__push_");
    assert!(!all.is_empty(), "no synth__push_*.json in {}", dir.display());
    let mut checked = 0;
    for path in &all {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (msg, _n, out) = summary(path);
        assert!(!msg.message_id.is_empty(), "{name}");
        match name.as_str() {
            "synth__push_command_wipe_done.json" => {
                assert_eq!(types(&out), ["command.acknowledged"]);
                assert_eq!(out[0].device_id.as_str(), "android:LC01faqpoi:34d187efe6d96e2d");
                assert_eq!(out[0].command_id.as_deref(), Some("1789411953942"));
                assert_eq!(out[0].data["command_type"], "WIPE");
            }
            "synth__push_command_error.json" => {
                assert_eq!(types(&out), ["command.error"]);
                assert_eq!(out[0].command_id.as_deref(), Some("1754900000000"));
                assert_eq!(out[0].data["error"]["code"], 9);
                assert_eq!(out[0].data["error_code"], "MANAGEMENT_MODE");
            }
            "synth__push_command_start_lost_mode_success.json" => {
                assert_eq!(types(&out), ["command.acknowledged"]);
                assert_eq!(out[0].data["command_type"], "START_LOST_MODE");
            }
            "synth__push_enrollment_byod.json" => {
                assert_eq!(types(&out), ["device.enrolled"]);
                assert_eq!(out[0].device_id.as_str(), "android:LC00synth1:333b5673b7649c99");
                assert_eq!(out[0].data["ownership"], "PERSONALLY_OWNED");
                assert_eq!(out[0].data["management_mode"], "PROFILE_OWNER");
                assert_eq!(out[0].data["applied_policy_version"], 1);
            }
            "synth__push_status_report_noncompliant.json" => {
                assert_eq!(types(&out), ["device.status_report", "device.inventory"]);
                assert_eq!(out[0].data["policy_compliant"], false);
                let nc = out[0].data["non_compliance"].as_array().unwrap();
                assert_eq!(nc.len(), 3);
                assert_eq!(nc[0]["setting_name"], "applications");
                assert_eq!(nc[0]["reason"], "APP_NOT_INSTALLED");
                assert_eq!(nc[0]["package_name"], "com.example.crm");
                let inv = out[1].inventory.as_ref().unwrap();
                assert_eq!(inv.serial_number.as_deref(), Some("B54Z-7OY3-NHH7-FASO6-MSPN-O24B-2"));
                assert_eq!(inv.model.as_deref(), Some("SM-A055F"));
                assert_eq!(inv.os_version.as_deref(), Some("14"));
            }
            "synth__push_enterprise_upgrade.json" => {
                assert_eq!(types(&out), ["android.enterprise_upgrade"]);
                assert_eq!(out[0].device_id.as_str(), "android:LC00synth1");
                assert_eq!(out[0].data["upgrade_state"], "UPGRADE_STATE_SUCCEEDED");
            }
            "synth__push_test_no_data.json" => {
                assert!(out.is_empty(), "{name}");
            }
            other => {
                eprintln!("{other}: decoded, {} emission(s), no specific expectations", out.len());
                continue;
            }
        }
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} known captures checked");
}

#[test]
fn own_push_vectors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let all = files(&dir, "push_");
    assert_eq!(all.len(), 3);
    for path in &all {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (_msg, _n, out) = summary(path);
        match name.as_str() {
            "push_status_report_deleted.json" => {
                assert_eq!(types(&out), ["device.unenrolled"]);
                assert_eq!(out[0].device_id.as_str(), "android:LCproj01:3f1c0a9e77d2b410");
                assert_eq!(out[0].data["applied_policy_version"], 12);
            }
            "push_command_lock_pending.json" => assert!(out.is_empty()),
            "push_status_report_fully_managed.json" => {
                assert_eq!(types(&out), ["device.status_report", "device.inventory"]);
                assert_eq!(out[0].data["last_status_report_time"], "2026-01-21T08:59:58.123456789Z");
                assert_eq!(out[0].data["device_posture"], "SECURE");
                let inv = out[1].inventory.as_ref().unwrap();
                assert_eq!(inv.imei.as_deref(), Some("358240051111110"));
                assert_eq!(inv.build_version.as_deref(), Some("BP2A.250605.031"));
            }
            other => panic!("{other}: vector without expectations"),
        }
    }
}
