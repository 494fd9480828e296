//! The data directory of the embedded default: development CA, server certificate, the SCEP RA
//! certificate, the secrets and the storage key, created on first start and reused afterwards.
//!
//! This is file IO around `mdm_certs::devpki`; the certificate contents are decided there.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use mdm_certs::devpki::{self, SubjectAltName};
use mdm_certs::{PKey, Private, X509};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.to_owned(), source }
}

fn invalid(path: &Path, message: impl std::fmt::Display) -> PkiError {
    PkiError::Invalid { path: path.to_owned(), message: message.to_string() }
}

/// Everything the runtime needs from the data directory.
#[derive(Debug)]
pub struct DataDir {
    pub root: PathBuf,
    pub ca: X509,
    pub ca_key: PKey<Private>,
    pub ca_pem: Vec<u8>,
    pub server_chain_pem: Vec<u8>,
    pub server_key_pem: Vec<u8>,
    pub api_key: String,
    pub enroll_secret: String,
    pub pubsub_token: String,
    /// SCEP registration authority: an RSA certificate from the CA that devices encrypt their
    /// requests to and that signs the replies (the CA's own key is EC, which SCEP cannot use).
    pub scep_ra: X509,
    pub scep_ra_key: PKey<Private>,
    /// The static SCEP challenge (`scep-challenge`).
    pub scep_challenge: String,
    /// The key that seals secrets at rest (`storage-key`), unless `store.encryption_key_file`
    /// names another.
    pub storage_key: [u8; 32],
}

/// How long generated certificates live. The server certificate is renewed at start when it
/// has less than [`RENEW_BEFORE_S`] left or the public host changed.
const CA_DAYS: u32 = 3650;
const SERVER_DAYS: u32 = 397;
const SCEP_RA_DAYS: u32 = 730;
const RENEW_BEFORE_S: i64 = 30 * 86_400;

fn random_serial() -> [u8; 16] {
    devpki::serial_from_random(rand::random())
}

/// 32 random bytes, URL-safe base64 without padding: easy to paste into headers and URLs.
fn random_secret() -> String {
    use base64::Engine;
    let b: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io(path))?;
    f.write_all(contents).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn read_or_create_secret(path: &Path) -> Result<String, PkiError> {
    match fs::read_to_string(path) {
        Ok(s) => {
            let s = s.trim().to_owned();
            if s.is_empty() {
                return Err(invalid(path, "secret file is empty"));
            }
            Ok(s)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let s = random_secret();
            write_private(path, format!("{s}\n").as_bytes())?;
            Ok(s)
        }
        Err(e) => Err(PkiError::Io { path: path.to_owned(), source: e }),
    }
}

/// Parses a storage key: 32 bytes written as 64 hex digits or as base64 (standard or URL-safe,
/// padded or not). Surrounding whitespace is ignored.
pub fn parse_storage_key(text: &str) -> Result<[u8; 32], String> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let t = text.trim();
    // Text made only of hex digits, in pairs, is read as hex (so a short hex key is reported with
    // its real length). A 32-byte key in base64 is 43 or 44 characters: never taken for hex.
    let bytes = if !t.is_empty() && t.len().is_multiple_of(2) && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(t).map_err(|e| e.to_string())?
    } else {
        [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(t).ok())
            .ok_or("not 64 hex digits and not base64")?
    };
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("the key is {} bytes, expected 32 (AES-256)", bytes.len()))
}

/// Reads a storage key from an operator-provided file.
pub fn read_storage_key(path: &Path) -> Result<[u8; 32], PkiError> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    parse_storage_key(&text).map_err(|m| invalid(path, m))
}

/// `storage-key`: 32 random bytes as hex, created on first use.
fn read_or_create_storage_key(path: &Path) -> Result<[u8; 32], PkiError> {
    if path.exists() {
        return read_storage_key(path);
    }
    let mut key = [0u8; 32];
    openssl::rand::rand_bytes(&mut key).map_err(|e| invalid(path, e))?;
    write_private(path, format!("{}\n", hex::encode(key)).as_bytes())?;
    Ok(key)
}

/// Reads a secret from an operator-provided file (must exist and be non-empty).
pub fn read_secret(path: &Path) -> Result<String, PkiError> {
    let s = fs::read_to_string(path).map_err(io(path))?;
    let s = s.trim().to_owned();
    if s.is_empty() {
        return Err(invalid(path, "secret file is empty"));
    }
    Ok(s)
}

fn server_names(public_host: &str) -> Vec<SubjectAltName> {
    let mut names = vec![
        SubjectAltName::Dns("localhost".into()),
        SubjectAltName::Ip("127.0.0.1".parse().expect("literal")),
        SubjectAltName::Ip("::1".parse().expect("literal")),
    ];
    let extra = match public_host.parse::<IpAddr>() {
        Ok(ip) => SubjectAltName::Ip(ip),
        Err(_) => SubjectAltName::Dns(public_host.to_owned()),
    };
    if !names.contains(&extra) {
        names.push(extra);
    }
    names
}

/// Opens (creating on first use) the data directory. `now` is unix seconds.
///
/// Instances behind one load balancer must agree on the CA, the SCEP RA, the secrets and the
/// storage key, so they share one data directory (a shared volume, or a copy of a directory
/// made by a first start). Several instances may start at once on an empty shared directory:
/// an exclusive lock on `<data_dir>/.lock` (advisory, `flock`) makes the first create
/// everything and the others read what it wrote, instead of each writing a CA of its own.
pub fn open(root: &Path, public_host: &str, now: i64) -> Result<DataDir, PkiError> {
    fs::create_dir_all(root).map_err(io(root))?;
    let lock_path = root.join(".lock");
    let lock =
        fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    let opened = open_locked(root, public_host, now);
    let _ = lock.unlock();
    opened
}

fn open_locked(root: &Path, public_host: &str, now: i64) -> Result<DataDir, PkiError> {
    let ca_path = root.join("ca.pem");
    let ca_key_path = root.join("ca-key.pem");
    let (ca, ca_key) = if ca_path.exists() {
        let pem = fs::read(&ca_path).map_err(io(&ca_path))?;
        let key_pem = fs::read(&ca_key_path).map_err(io(&ca_key_path))?;
        let ca = X509::from_pem(&pem).map_err(|e| invalid(&ca_path, e))?;
        let key = PKey::private_key_from_pem(&key_pem).map_err(|e| invalid(&ca_key_path, e))?;
        (ca, key)
    } else {
        let key = devpki::generate_key().map_err(|e| invalid(&ca_key_path, e))?;
        let ca = devpki::create_ca(&key, "MDM Gateway Development CA", now, CA_DAYS, &random_serial())
            .map_err(|e| invalid(&ca_path, e))?;
        write_private(&ca_key_path, devpki::key_to_pem(&key).as_bytes())?;
        fs::write(&ca_path, devpki::to_pem(&ca)).map_err(io(&ca_path))?;
        (ca, key)
    };
    let ca_pem = devpki::to_pem(&ca).into_bytes();

    let server_path = root.join("server.pem");
    let server_key_path = root.join("server-key.pem");
    let hosts_path = root.join("server-hosts.txt");
    let names = server_names(public_host);
    let names_text = names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join("\n");
    let reuse = server_path.exists()
        && server_key_path.exists()
        && fs::read_to_string(&hosts_path).map(|h| h == names_text).unwrap_or(false)
        && fs::read(&server_path)
            .ok()
            .and_then(|pem| X509::from_pem(&pem).ok())
            .map(|c| not_after_unix(&c).map(|na| na - now > RENEW_BEFORE_S).unwrap_or(false))
            .unwrap_or(false);
    if !reuse {
        let key = devpki::generate_key().map_err(|e| invalid(&server_key_path, e))?;
        let cert = devpki::issue_server_certificate(&ca, &ca_key, &key, &names, now, SERVER_DAYS, &random_serial())
            .map_err(|e| invalid(&server_path, e))?;
        write_private(&server_key_path, devpki::key_to_pem(&key).as_bytes())?;
        let mut chain = devpki::to_pem(&cert);
        chain.push_str(&devpki::to_pem(&ca));
        fs::write(&server_path, chain).map_err(io(&server_path))?;
        fs::write(&hosts_path, &names_text).map_err(io(&hosts_path))?;
    }
    let server_chain_pem = fs::read(&server_path).map_err(io(&server_path))?;
    let server_key_pem = fs::read(&server_key_path).map_err(io(&server_key_path))?;
    let (scep_ra, scep_ra_key) = scep_ra(root, &ca, &ca_key, now)?;

    Ok(DataDir {
        root: root.to_owned(),
        ca,
        ca_key,
        ca_pem,
        server_chain_pem,
        server_key_pem,
        api_key: read_or_create_secret(&root.join("api-key"))?,
        enroll_secret: read_or_create_secret(&root.join("enroll-secret"))?,
        pubsub_token: read_or_create_secret(&root.join("pubsub-token"))?,
        scep_ra,
        scep_ra_key,
        scep_challenge: read_or_create_secret(&root.join("scep-challenge"))?,
        storage_key: read_or_create_storage_key(&root.join("storage-key"))?,
    })
}

/// `scep-ra.pem` / `scep-ra-key.pem`: RSA 2048, keyUsage digitalSignature + keyEncipherment, no
/// extended key usage, issued by the CA. Reissued (same rule as the server certificate) when it
/// has less than [`RENEW_BEFORE_S`] left or no longer chains to the CA.
fn scep_ra(root: &Path, ca: &X509, ca_key: &PKey<Private>, now: i64) -> Result<(X509, PKey<Private>), PkiError> {
    let cert_path = root.join("scep-ra.pem");
    let key_path = root.join("scep-ra-key.pem");
    let existing = (|| {
        let cert = X509::from_pem(&fs::read(&cert_path).ok()?).ok()?;
        let key = PKey::private_key_from_pem(&fs::read(&key_path).ok()?).ok()?;
        let fresh = not_after_unix(&cert).is_some_and(|na| na - now > RENEW_BEFORE_S);
        let ca_public = ca.public_key().ok()?;
        let ours = ca.issued(&cert) == openssl::x509::X509VerifyResult::OK
            && cert.verify(&ca_public).unwrap_or(false)
            && cert.public_key().ok()?.public_eq(&key);
        (fresh && ours).then_some((cert, key))
    })();
    if let Some(found) = existing {
        return Ok(found);
    }
    let key = devpki::generate_rsa_key(2048).map_err(|e| invalid(&key_path, e))?;
    let profile = devpki::LeafProfile {
        common_name: Some("MDM Gateway SCEP RA"),
        names: &[],
        usage: devpki::Usage::Unrestricted,
        not_before: now - devpki::BACKDATE_SECONDS,
        not_after: now + i64::from(SCEP_RA_DAYS) * 86_400,
        serial: &random_serial(),
    };
    let cert = devpki::issue_leaf_certificate(ca, ca_key, &key, &profile).map_err(|e| invalid(&cert_path, e))?;
    write_private(&key_path, devpki::key_to_pem(&key).as_bytes())?;
    fs::write(&cert_path, devpki::to_pem(&cert)).map_err(io(&cert_path))?;
    Ok((cert, key))
}

/// A certificate's notAfter as unix seconds.
pub fn not_after_unix(cert: &X509) -> Option<i64> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
    let diff = epoch.diff(cert.not_after()).ok()?;
    Some(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_key_forms() {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(key);
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
        for text in [hex::encode(key), hex::encode_upper(key), b64.clone(), format!("  {b64url}\n")] {
            assert_eq!(parse_storage_key(&text), Ok(key), "{text}");
        }
        assert!(parse_storage_key(&hex::encode([1u8; 16])).unwrap_err().contains("16 bytes"));
        assert!(parse_storage_key("not a key!").is_err());
        assert!(parse_storage_key("").is_err());
    }

    /// Instances starting together on one empty shared directory end up with one CA and one
    /// set of secrets (regression: each wrote its own, and devices enrolled through one
    /// instance were strangers to the others).
    #[test]
    fn concurrent_first_starts_share_one_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opened: Vec<DataDir> = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..3).map(|_| s.spawn(|| open(dir.path(), "localhost", 1_700_000_000).expect("open"))).collect();
            handles.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        let on_disk = fs::read(dir.path().join("ca.pem")).expect("ca.pem");
        for d in &opened {
            assert_eq!(d.ca_pem, on_disk, "every instance uses the CA on disk");
            assert_eq!(d.api_key, opened[0].api_key);
            assert_eq!(d.storage_key, opened[0].storage_key);
            assert_eq!(d.scep_ra.to_der().expect("der"), opened[0].scep_ra.to_der().expect("der"));
            assert_eq!(d.server_chain_pem, opened[0].server_chain_pem);
        }
    }

    #[test]
    fn storage_key_is_created_once_and_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = open(dir.path(), "localhost", 1_700_000_000).expect("open");
        let again = open(dir.path(), "localhost", 1_700_000_000).expect("reopen");
        assert_eq!(first.storage_key, again.storage_key);
        assert_ne!(first.storage_key, [0u8; 32]);
        let text = fs::read_to_string(dir.path().join("storage-key")).expect("file");
        assert_eq!(text.trim(), hex::encode(first.storage_key));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("storage-key")).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
