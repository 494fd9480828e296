//! Raw captures: every file under a vectors directory (e.g. `$MDM_VECTORS`) decoded through the
//! protocol crates by what it is (its platform folder and name), re-encoded and decoded again
//! where the crate can encode that message. Files the crates cannot handle must be in the skip
//! list, with a reason.

use std::path::{Path, PathBuf};

use super::check;
use super::format::{MessageKind, SkipList};
use super::report::{Outcome, Report, Verdict};

/// Checks every file under `root`; outcomes go to section `captures/<first folder>`.
pub fn run_captures(root: &Path, skips: &SkipList, report: &mut Report) -> Result<(), String> {
    let mut files = Vec::new();
    walk(root, &mut files).map_err(|e| format!("{}: {e}", root.display()))?;
    files.sort();
    for file in files {
        let rel = file.strip_prefix(root).unwrap_or(&file).to_string_lossy().replace('\\', "/");
        let section = match rel.split_once('/') {
            Some((platform, _)) => format!("captures/{platform}"),
            None => "captures".to_owned(),
        };
        let name = rel.rsplit('/').next().unwrap_or(&rel).to_owned();
        let flow = rel.rsplit_once('/').map(|(d, _)| d.to_owned()).unwrap_or_default();
        let verdict = if let Some(reason) = skips.reason(&rel) {
            Verdict::Skipped(reason.to_owned())
        } else {
            match std::fs::read(&file) {
                Ok(bytes) => match check_capture(&rel, &bytes) {
                    Ok(s) => Verdict::Passed(s),
                    Err(e) => Verdict::Failed(e),
                },
                Err(e) => Verdict::Failed(e.to_string()),
            }
        };
        report.push(Outcome::new(&section, &flow, &name, verdict));
    }
    Ok(())
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// Decodes one capture (by its path relative to the vectors root); a summary, or why not.
pub fn check_capture(rel: &str, bytes: &[u8]) -> Result<String, String> {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    let platform = rel.split('/').next().unwrap_or("");
    match platform {
        "apple" if name.ends_with(".plist") || name.ends_with(".xml") => apple(bytes),
        "windows" => windows(name, bytes),
        "android" => android(name, bytes),
        _ => Err("no decoder for this file: add it to the skip list with a reason".into()),
    }
}

fn apple(bytes: &[u8]) -> Result<String, String> {
    let v: plist::Value = plist::from_bytes(bytes).map_err(|e| format!("not a plist: {e}"))?;
    let dict = v.as_dictionary().ok_or("not a dictionary")?;
    let mut again = Vec::new();
    plist::to_writer_xml(&mut again, &v).map_err(|e| e.to_string())?;
    if dict.contains_key("MessageType") {
        let m = mdm_apple::decode_checkin(bytes).map_err(|e| format!("check-in: {e}"))?;
        let m2 = mdm_apple::decode_checkin(&again).map_err(|e| format!("re-encoded check-in: {e}"))?;
        if m.event_data() != m2.event_data() {
            return Err("check-in differs after re-encoding".into());
        }
        Ok(format!("check-in {} (round trip)", m.message_type()))
    } else if dict.contains_key("Status") {
        let r = mdm_apple::decode_report(bytes).map_err(|e| format!("report: {e}"))?;
        let r2 = mdm_apple::decode_report(&again).map_err(|e| format!("re-encoded report: {e}"))?;
        if r.event_data() != r2.event_data() {
            return Err("report differs after re-encoding".into());
        }
        Ok(format!("report {} (round trip)", r.status.as_str()))
    } else if dict.contains_key("Command") {
        check::decode(MessageKind::AppleCommand, bytes).map(|s| format!("command {s}"))
    } else {
        Err("a plist that is neither a check-in, a report nor a command".into())
    }
}

fn windows(name: &str, bytes: &[u8]) -> Result<String, String> {
    use mdm_windows::enroll as e;
    if name.ends_with(".http") {
        let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
        let line = text.lines().next().unwrap_or("");
        let mut parts = line.split(' ');
        let (method, target, version) = (parts.next(), parts.next(), parts.next());
        let ok_method = matches!(method, Some("GET" | "POST" | "PUT"));
        let path = target.and_then(|t| t.split('?').next()).unwrap_or("");
        let known = ["/EnrollmentServer/Discovery.svc", "/ManagementServer/MDM.svc"].contains(&path);
        if !ok_method || version != Some("HTTP/1.1") || !known {
            return Err(format!("not a request to a Windows endpoint the gateway serves: {line:?}"));
        }
        let headers = text.lines().skip(1).take_while(|l| !l.is_empty());
        for h in headers {
            if !h.contains(": ") {
                return Err(format!("bad header line {h:?}"));
            }
        }
        return Ok(format!("{} {path}", method.unwrap_or("")));
    }
    if name.contains("discover-request") {
        let d = e::DiscoverRequest::decode(bytes).map_err(|x| x.to_string())?;
        let again = e::DiscoverRequest::decode(
            &d.encode(d.message_id.as_deref().unwrap_or("urn:uuid:1"), "https://example.invalid/d"),
        )
        .map_err(|x| format!("re-encoded: {x}"))?;
        if again != d {
            return Err("Discover differs after re-encoding".into());
        }
        return Ok("MS-MDE2 Discover (round trip)".into());
    }
    if name.contains("discover-response") {
        return check::decode(MessageKind::Mde2DiscoverResponse, bytes).map(|u| format!("DiscoverResponse {u}"));
    }
    if name.contains("getpolicies-request") {
        return check::decode(MessageKind::XcepGetPolicies, bytes);
    }
    if name.contains("rstr-response") {
        return check::decode(MessageKind::WstepResponse, bytes);
    }
    if name.contains("provisioningdoc") {
        let d = e::ProvisioningDoc::decode(bytes).map_err(|x| x.to_string())?;
        let again = e::ProvisioningDoc::decode(&d.encode()).map_err(|x| format!("re-encoded: {x}"))?;
        if again != d {
            return Err("provisioning document differs after re-encoding".into());
        }
        return Ok("wap-provisioningdoc (round trip)".into());
    }
    if name.contains("FRAGMENT") {
        // A SyncML command fragment using an undeclared `A:` (syncml:metinf) prefix: embedded in a
        // message that declares it, as it would be on the wire.
        let fragment = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
        let doc = format!(
            "<SyncML xmlns=\"SYNCML:SYNCML1.2\" xmlns:A=\"syncml:metinf\"><SyncHdr><VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto><SessionID>1</SessionID><MsgID>2</MsgID><Target><LocURI>DEV</LocURI></Target><Source><LocURI>https://mdm.example/ManagementServer/MDM.svc</LocURI></Source></SyncHdr><SyncBody>{fragment}<Final/></SyncBody></SyncML>"
        );
        return check::decode(MessageKind::Syncml, doc.as_bytes()).map(|s| format!("fragment in {s} (round trip)"));
    }
    if name.contains("syncml") || name.starts_with("ms-mdm-spec") {
        return check::decode(MessageKind::Syncml, bytes).map(|s| format!("{s} (round trip)"));
    }
    Err("no decoder for this Windows capture: add it to the skip list with a reason".into())
}

fn android(name: &str, bytes: &[u8]) -> Result<String, String> {
    if name.starts_with("synth__push_") {
        return check::decode(MessageKind::PubsubPush, bytes);
    }
    if name.contains("operation") {
        let op: mdm_android::Operation = serde_json::from_slice(bytes).map_err(|e| format!("Operation: {e}"))?;
        let _ = op;
        return Ok("AMAPI Operation".into());
    }
    if name.contains("device") {
        let d: mdm_android::Device = serde_json::from_slice(bytes).map_err(|e| format!("Device: {e}"))?;
        let inv = mdm_android::normalise::device_inventory(&d);
        return Ok(format!("AMAPI Device {:?}", inv.model.unwrap_or_default()));
    }
    Err("no decoder for this Android file: add it to the skip list with a reason".into())
}
