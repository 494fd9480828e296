use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The three platform families the gateway terminates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Apple,
    Windows,
    Android,
}

impl Platform {
    pub const ALL: [Platform; 3] = [Platform::Apple, Platform::Windows, Platform::Android];

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Apple => "apple",
            Platform::Windows => "windows",
            Platform::Android => "android",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Platform {
    type Err = DeviceIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "apple" => Ok(Platform::Apple),
            "windows" => Ok(Platform::Windows),
            "android" => Ok(Platform::Android),
            other => Err(DeviceIdError::UnknownPlatform(other.to_owned())),
        }
    }
}

/// `<platform>:<native id>` (CONTRACT §4).
///
/// Apple: `apple:<UDID or EnrollmentID>` for the device channel and
/// `apple:<UDID or EnrollmentID>:<UserID or EnrollmentUserID>` for a user channel.
/// Windows: `windows:<DeviceID>`. Android: `android:<enterprise id>:<device id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId {
    full: String,
    platform: Platform,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    #[error("device id must look like `<platform>:<native id>`")]
    MissingPlatform,
    #[error("unknown platform `{0}` (expected apple, windows or android)")]
    UnknownPlatform(String),
    #[error("device id has an empty native part")]
    Empty,
    #[error("device id contains a control character or whitespace")]
    BadCharacter,
    #[error("device id is longer than {max} bytes", max = DeviceId::MAX_LEN)]
    TooLong,
}

impl DeviceId {
    pub const MAX_LEN: usize = 512;

    /// Builds an id from a platform and its native parts, joined by `:`.
    pub fn new(platform: Platform, parts: &[&str]) -> Result<Self, DeviceIdError> {
        let mut full = String::from(platform.as_str());
        for p in parts {
            full.push(':');
            full.push_str(p);
        }
        full.parse()
    }

    pub fn platform(&self) -> Platform {
        self.platform
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The id without the `<platform>:` prefix (NanoMDM's enrollment id for Apple).
    pub fn native(&self) -> &str {
        &self.full[self.platform.as_str().len() + 1..]
    }
}

impl FromStr for DeviceId {
    type Err = DeviceIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > Self::MAX_LEN {
            return Err(DeviceIdError::TooLong);
        }
        let (platform, native) = s.split_once(':').ok_or(DeviceIdError::MissingPlatform)?;
        let platform: Platform = platform.parse()?;
        if native.is_empty() || native.split(':').any(str::is_empty) {
            return Err(DeviceIdError::Empty);
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(DeviceIdError::BadCharacter);
        }
        Ok(DeviceId { full: s.to_owned(), platform })
    }
}

impl TryFrom<String> for DeviceId {
    type Error = DeviceIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DeviceId> for String {
    fn from(d: DeviceId) -> String {
        d.full
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_user_channel() {
        let id: DeviceId = "apple:66ADE930-5FDF:501".parse().unwrap();
        assert_eq!(id.platform(), Platform::Apple);
        assert_eq!(id.native(), "66ADE930-5FDF:501");
    }

    #[test]
    fn rejects_bad_ids() {
        assert_eq!("apple".parse::<DeviceId>(), Err(DeviceIdError::MissingPlatform));
        assert_eq!("apple:".parse::<DeviceId>(), Err(DeviceIdError::Empty));
        assert_eq!("apple:a::b".parse::<DeviceId>(), Err(DeviceIdError::Empty));
        assert!(matches!("ios:x".parse::<DeviceId>(), Err(DeviceIdError::UnknownPlatform(_))));
        assert_eq!("apple:a b".parse::<DeviceId>(), Err(DeviceIdError::BadCharacter));
    }
}
