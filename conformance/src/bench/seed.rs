//! Enrolled devices written straight into a (stopped) gateway's SQLite file, in one transaction
//! with prepared multi-row inserts: the rows a real Authenticate + TokenUpdate leaves behind,
//! without a million round trips. Devices that will send requests get the fingerprint of their
//! real certificate; the others get a random one. [`seed_windows`] does the same for Windows
//! enrollments (what MS-WSTEP enrollment leaves).

use std::path::Path;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::Connection;
use rusqlite::types::Value;
use serde::Serialize;

/// A device that will send requests: its UDID and certificate.
#[derive(Debug, Clone)]
pub struct ActiveDevice {
    pub udid: String,
    pub cert_sha256: String,
    /// As the gateway records it (`CN=<udid>`).
    pub cert_subject: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeedStats {
    pub rows: u64,
    pub seconds: f64,
    pub db_bytes: u64,
}

const COLUMNS: &str = "device_id, platform, parent, state, cert_sha256, push_token, push_magic, push_topic, unlock_token, \
     bootstrap_token, inventory, attributes, enrolled_at, last_seen, checked_in_event_at, created_at, updated_at";
const PER_ROW: &str =
    "(?, 'apple', NULL, 'enrolled', ?, ?, ?, 'com.apple.mgmt.External.emulated', ?, NULL, ?, ?, ?, ?, ?, ?, ?)";
const BATCH: usize = 200;

struct Row {
    udid: String,
    cert_sha256: String,
    cert_subject: String,
    token: [u8; 32],
}

/// The UDID of filler device `i` written by [`seed`] with `seed` (the `active` devices take the
/// first indexes, so fillers start at `active.len()`).
pub fn seeded_udid(seed: u64, i: u64) -> String {
    format!("SEED-{seed:04X}-{i:010}")
}

/// Inserts `total` enrolled device channels (the `active` ones first, then `SEED-<n>` fillers)
/// into the SQLite database at `db` (which must have the gateway's schema: start the gateway
/// on the data directory once before). `now` stamps `last_seen` and `checked_in_event_at`, so
/// devices look recently seen, as in a fleet checking in steadily.
pub async fn seed(db: &Path, total: u64, active: &[ActiveDevice], now: i64, seed: u64) -> Result<SeedStats, String> {
    let db = db.to_path_buf();
    let active = active.to_vec();
    tokio::task::spawn_blocking(move || seed_blocking(&db, total, &active, now, seed))
        .await
        .map_err(|e| format!("seeding thread: {e}"))?
}

fn seed_blocking(db: &Path, total: u64, active: &[ActiveDevice], now: i64, seed: u64) -> Result<SeedStats, String> {
    let started = Instant::now();
    let mut conn = Connection::open(db).map_err(|e| format!("open {}: {e}", db.display()))?;
    conn.pragma_update(None, "synchronous", "OFF").map_err(|e| e.to_string())?;
    conn.pragma_update(None, "cache_size", -262_144).map_err(|e| e.to_string())?;
    let mut rng = StdRng::seed_from_u64(seed);
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    let full_sql = format!("INSERT INTO enrollments ({COLUMNS}) VALUES {}", vec![PER_ROW; BATCH].join(", "));
    let mut batch: Vec<Row> = Vec::with_capacity(BATCH);
    let mut values: Vec<Value> = Vec::with_capacity(BATCH * 12);
    let mut written = 0u64;
    for i in 0..total {
        let row = match active.get(i as usize) {
            Some(a) => Row {
                udid: a.udid.clone(),
                cert_sha256: a.cert_sha256.clone(),
                cert_subject: a.cert_subject.clone(),
                token: rng.random(),
            },
            None => {
                let udid = seeded_udid(seed, i);
                let fp: [u8; 32] = rng.random();
                Row { cert_subject: format!("CN={udid}"), udid, cert_sha256: hex::encode(fp), token: rng.random() }
            }
        };
        batch.push(row);
        if batch.len() == BATCH || i + 1 == total {
            for r in &batch {
                let serial: String = r.udid.chars().filter(|c| c.is_ascii_alphanumeric()).rev().take(12).collect();
                let inventory = serde_json::json!({
                    "serial_number": serial, "udid": r.udid, "model": "iPhone15,3", "model_name": "iPhone",
                    "product_name": "iPhone15,3", "os_version": "17.5.1", "build_version": "21F90",
                    "device_name": format!("Emulated {serial}"),
                })
                .to_string();
                let attributes = serde_json::json!({
                    "enrollment_type": "device", "cert_subject": r.cert_subject, "awaiting_configuration": false,
                })
                .to_string();
                values.extend([
                    Value::Text(format!("apple:{}", r.udid)),
                    Value::Text(r.cert_sha256.clone()),
                    Value::Blob(r.token.to_vec()),
                    Value::Text(format!("magic-{}", r.udid)),
                    Value::Blob(b"unlock-token-bytes".to_vec()),
                    Value::Text(inventory),
                    Value::Text(attributes),
                    Value::Integer(now - 86_400),
                    Value::Integer(now),
                    Value::Integer(now),
                    Value::Integer(now - 86_400),
                    Value::Integer(now),
                ]);
            }
            let inserted = if batch.len() == BATCH {
                tx.prepare_cached(&full_sql).and_then(|mut st| st.execute(rusqlite::params_from_iter(values.drain(..))))
            } else {
                let sql =
                    format!("INSERT INTO enrollments ({COLUMNS}) VALUES {}", vec![PER_ROW; batch.len()].join(", "));
                tx.prepare(&sql).and_then(|mut st| st.execute(rusqlite::params_from_iter(values.drain(..))))
            };
            inserted.map_err(|e| format!("insert: {e}"))?;
            written += batch.len() as u64;
            batch.clear();
        }
    }
    tx.commit().map_err(|e| e.to_string())?;
    // Leave the file as the gateway would find it after a clean stop: WAL folded in.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).map_err(|e| e.to_string())?;
    conn.close().map_err(|(_, e)| e.to_string())?;
    let db_bytes = std::fs::metadata(db).map(|m| m.len()).unwrap_or(0);
    Ok(SeedStats { rows: written, seconds: started.elapsed().as_secs_f64(), db_bytes })
}

/// A Windows device written by [`seed_windows`]: its DeviceID, the SHA-256 of its client
/// certificate, and its user.
#[derive(Debug, Clone)]
pub struct WindowsSeed {
    pub device_id: String,
    pub cert_sha256: String,
    pub upn: String,
}

/// Inserts the enrollments a Windows enrollment leaves (`windows:<DeviceID>`, `enrolled`,
/// bound to the certificate's SHA-256, the user and the enrollment's attributes), in one
/// transaction, into the (stopped) gateway's SQLite database at `db`.
pub async fn seed_windows(db: &Path, devices: &[WindowsSeed], now: i64) -> Result<SeedStats, String> {
    let db = db.to_path_buf();
    let devices = devices.to_vec();
    tokio::task::spawn_blocking(move || seed_windows_blocking(&db, &devices, now))
        .await
        .map_err(|e| format!("seeding thread: {e}"))?
}

fn seed_windows_blocking(db: &Path, devices: &[WindowsSeed], now: i64) -> Result<SeedStats, String> {
    let started = Instant::now();
    let mut conn = Connection::open(db).map_err(|e| format!("open {}: {e}", db.display()))?;
    conn.pragma_update(None, "synchronous", "OFF").map_err(|e| e.to_string())?;
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    {
        let mut st = tx
            .prepare(&format!(
                "INSERT INTO enrollments ({COLUMNS}) VALUES \
                 (?, 'windows', NULL, 'enrolled', ?, NULL, NULL, NULL, NULL, NULL, ?, ?, ?, ?, NULL, ?, ?)"
            ))
            .map_err(|e| e.to_string())?;
        for (i, d) in devices.iter().enumerate() {
            let inventory = serde_json::json!({
                "os_name": "Windows", "os_version": "10.0.26200.6584", "device_name": format!("BENCH-{i:06}"),
                "wifi_mac": "00-15-5D-01-02-03",
            })
            .to_string();
            let attributes = serde_json::json!({
                "upn": d.upn, "auth_policy": "OnPremise", "enrollment_type": "Full", "cert_store": "User",
                "device_type": "CIMClient_Windows", "os_edition": "72",
            })
            .to_string();
            st.execute(rusqlite::params![
                format!("windows:{}", d.device_id),
                d.cert_sha256,
                inventory,
                attributes,
                now - 86_400,
                now - 3_600,
                now - 86_400,
                now - 3_600,
            ])
            .map_err(|e| format!("insert: {e}"))?;
        }
    }
    tx.commit().map_err(|e| e.to_string())?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).map_err(|e| e.to_string())?;
    conn.close().map_err(|(_, e)| e.to_string())?;
    let db_bytes = std::fs::metadata(db).map(|m| m.len()).unwrap_or(0);
    Ok(SeedStats { rows: devices.len() as u64, seconds: started.elapsed().as_secs_f64(), db_bytes })
}
