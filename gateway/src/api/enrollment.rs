//! `PUT /v1/enrollment/corporate-identifiers?type=imei|serial` (import a list, replacing the
//! previous one of that type) and `GET` (the list with each identifier's state).
//!
//! The file is CSV without a header, two columns: the identifier and details (at most 128
//! characters), at most 5 000 rows and 5 MB, one identifier type per file, as Intune imports
//! them. Rows with the same identifier and the same details count once; the same identifier
//! with different details is reported back (`duplicates`) and the first row's details are kept.
//! A malformed row refuses the whole file (422, nothing imported).

use std::collections::BTreeMap;

use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::{rfc3339, store_error};
use crate::AppState;
use crate::http_util::{Reply, json, json_error};
use crate::store::IdentifierKind;

/// Largest file accepted.
pub const MAX_CSV_BYTES: usize = 5 * 1024 * 1024;
/// Most rows accepted in one file.
pub const MAX_ROWS: usize = 5_000;
/// Longest details accepted, in characters.
pub const MAX_DETAILS_CHARS: usize = 128;
const MAX_IDENTIFIER: usize = 64;
const PAGE: u32 = 500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Query {
    #[serde(rename = "type")]
    kind: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

fn query(q: &str) -> Result<(IdentifierKind, Query), Box<Reply>> {
    let q: Query = serde_urlencoded::from_str(q)
        .map_err(|e| Box::new(json_error(StatusCode::BAD_REQUEST, "invalid_query", &e.to_string())))?;
    let kind = match q.kind.as_deref().map(IdentifierKind::parse) {
        Some(Some(k)) => k,
        _ => {
            return Err(Box::new(json_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_type",
                "`type` must be `imei` or `serial` (one identifier type per file)",
            )));
        }
    };
    Ok((kind, q))
}

/// Checks a normalised identifier's shape for its kind.
fn identifier_ok(kind: IdentifierKind, id: &str) -> bool {
    match kind {
        // IMEI (15), IMEISV (16) or MEID (14, hex).
        IdentifierKind::Imei => (14..=16).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit()),
        IdentifierKind::Serial => {
            id.len() <= MAX_IDENTIFIER && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        }
    }
}

pub(super) async fn put_corporate_identifiers(state: &AppState, q: &str, body: &[u8]) -> Reply {
    let (kind, _) = match query(q) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    if body.len() > MAX_CSV_BYTES {
        return json_error(StatusCode::PAYLOAD_TOO_LARGE, "file_too_large", "the file is larger than 5 MB");
    }
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).trim(csv::Trim::All).from_reader(body);
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut conflicts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 1;
        let invalid =
            |m: String| json_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_csv", &format!("row {line}: {m}"));
        let record = match record {
            Ok(r) => r,
            Err(e) => return invalid(e.to_string()),
        };
        if record.iter().all(str::is_empty) {
            continue;
        }
        if record.len() != 2 {
            return invalid(format!("{} columns; expected 2 (identifier, details) and no header", record.len()));
        }
        if rows.len() == MAX_ROWS {
            return json_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "too_many_rows",
                &format!("more than {MAX_ROWS} rows; split the file"),
            );
        }
        if line == 1
            && matches!(
                record[0].to_ascii_lowercase().replace([' ', '_', '-'], "").as_str(),
                "serial" | "serialnumber" | "imei" | "meid" | "identifier"
            )
        {
            return invalid(format!("{:?} looks like a header row; the file has no header", &record[0]));
        }
        let Some(id) = kind.normalise(&record[0]) else {
            return invalid("empty identifier".into());
        };
        if !identifier_ok(kind, &id) {
            return invalid(format!("{:?} is not a {} (a header row is not allowed)", &record[0], kind.as_str()));
        }
        let details = record[1].to_owned();
        if details.chars().count() > MAX_DETAILS_CHARS {
            return invalid(format!("details longer than {MAX_DETAILS_CHARS} characters"));
        }
        match seen.get(&id) {
            Some(&at) => {
                if rows[at].1 != details {
                    conflicts.entry(id).or_insert_with(|| vec![rows[at].1.clone()]).push(details);
                }
            }
            None => {
                seen.insert(id.clone(), rows.len());
                rows.push((id, details));
            }
        }
    }
    let now = state.clock.unix();
    match state.store.replace_corporate_identifiers(kind, &rows, now).await {
        Ok(n) => {
            tracing::info!(
                kind = kind.as_str(),
                listed = n,
                conflicts = conflicts.len(),
                "corporate identifiers imported"
            );
            let duplicates: Vec<_> = conflicts
                .into_iter()
                .map(
                    |(identifier, details)| json!({ "identifier": identifier, "details": details, "kept": details[0] }),
                )
                .collect();
            json(StatusCode::OK, &json!({ "type": kind.as_str(), "imported": n, "duplicates": duplicates }))
        }
        Err(e) => store_error(e),
    }
}

pub(super) async fn get_corporate_identifiers(state: &AppState, q: &str) -> Reply {
    let (kind, q) = match query(q) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let limit = q.limit.unwrap_or(PAGE).clamp(1, 5_000);
    match state.store.corporate_identifiers(kind, q.after.as_deref(), limit).await {
        Ok(list) => {
            let next = (list.len() == limit as usize).then(|| list.last().map(|c| c.identifier.clone())).flatten();
            let items: Vec<_> = list
                .iter()
                .map(|c| {
                    json!({
                        "identifier": c.identifier,
                        "details": c.details,
                        "state": if c.enrolled_device.is_some() { "enrolled" } else { "not_contacted" },
                        "device_id": c.enrolled_device,
                        "enrolled_at": c.enrolled_at.and_then(rfc3339),
                        "imported_at": rfc3339(c.created_at),
                    })
                })
                .collect();
            json(StatusCode::OK, &json!({ "type": kind.as_str(), "identifiers": items, "next": next }))
        }
        Err(e) => store_error(e),
    }
}
