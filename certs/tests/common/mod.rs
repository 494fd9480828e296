//! Test PKI built from the crate's own API, deterministic apart from key material.
#![allow(dead_code)] // each test binary uses a different subset

use std::{path::Path, process::Command};

use mdm_certs::{
    PKey, Private, TrustAnchors, X509,
    devpki::{self, LeafProfile, Usage},
};

/// 2025-06-15T15:06:40Z: all test certificates are placed around this instant.
pub(crate) const NOW: i64 = 1_750_000_000;
pub(crate) const DAY: i64 = 86_400;

pub(crate) struct Ca {
    pub(crate) cert: X509,
    pub(crate) key: PKey<Private>,
}

impl Ca {
    pub(crate) fn root(name: &str) -> Ca {
        let key = devpki::generate_key().unwrap();
        let cert = devpki::create_ca(&key, name, NOW - 30 * DAY, 3650, &[0x01]).unwrap();
        Ca { cert, key }
    }

    pub(crate) fn intermediate(&self, name: &str) -> Ca {
        let key = devpki::generate_key().unwrap();
        let cert =
            devpki::create_intermediate_ca(&self.cert, &self.key, &key, name, NOW - 30 * DAY, 1825, &[0x02]).unwrap();
        Ca { cert, key }
    }

    pub(crate) fn anchors(&self) -> TrustAnchors {
        TrustAnchors::new(vec![self.cert.clone()])
    }

    /// Client-auth device identity valid for a year around NOW.
    pub(crate) fn device(&self, cn: &str) -> (X509, PKey<Private>) {
        self.device_valid(cn, NOW - DAY, NOW + 365 * DAY)
    }

    pub(crate) fn device_valid(&self, cn: &str, not_before: i64, not_after: i64) -> (X509, PKey<Private>) {
        let key = devpki::generate_key().unwrap();
        let cert =
            devpki::issue_device_certificate(&self.cert, &self.key, &key, cn, not_before, not_after, &[0x10, 0x01])
                .unwrap();
        (cert, key)
    }

    pub(crate) fn leaf_with_usage(&self, cn: &str, usage: Usage) -> (X509, PKey<Private>) {
        let key = devpki::generate_key().unwrap();
        let profile = LeafProfile {
            common_name: Some(cn),
            names: &[],
            usage,
            not_before: NOW - DAY,
            not_after: NOW + 365 * DAY,
            serial: &[0x10, 0x02],
        };
        let cert = devpki::issue_leaf_certificate(&self.cert, &self.key, &key, &profile).unwrap();
        (cert, key)
    }
}

/// The openssl command-line tool, when installed; tests that compare against it are skipped otherwise.
pub(crate) fn openssl_cli() -> Option<&'static str> {
    const PATH: &str = "/usr/bin/openssl";
    if Path::new(PATH).exists() {
        Some(PATH)
    } else {
        eprintln!("skipping: {PATH} not installed");
        None
    }
}

/// Run the openssl CLI in `dir`, panicking with its stderr on failure.
pub(crate) fn run_openssl(cli: &str, dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new(cli).current_dir(dir).args(args).output().unwrap();
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

pub(crate) fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) {
    std::fs::write(dir.join(name), bytes).unwrap();
}
