//! `[cluster]`: how instances sharing one store divide the background duties (docs/scale-out.md).

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Longest accepted `cluster.instance_id`.
const MAX_INSTANCE_ID: usize = 100;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This instance's id in leases and command claims; generated at every start when absent.
    pub instance_id: Option<String>,
    /// How long a lease lasts without renewal, in seconds; holders renew it every third of that,
    /// and a standby takes over at most this long (plus a third) after its holder died.
    pub lease_ttl_s: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig { instance_id: None, lease_ttl_s: 15 }
    }
}

impl ClusterConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=3600).contains(&self.lease_ttl_s) {
            return Err(ConfigError::new("cluster.lease_ttl_s", "must be between 1 and 3600"));
        }
        if let Some(id) = &self.instance_id
            && (id.is_empty()
                || id.len() > MAX_INSTANCE_ID
                || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(ConfigError::new(
                "cluster.instance_id",
                format!("1 to {MAX_INSTANCE_ID} characters among letters, digits, `-`, `_` and `.`"),
            ));
        }
        Ok(())
    }
}
