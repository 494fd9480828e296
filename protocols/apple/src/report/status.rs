//! The `Status` of a command report. Open: a status this build does not know round-trips as
//! [`ReportStatus::Unknown`] and never fails decoding.

use mdm_core::CommandStatus;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReportStatus {
    /// The command ran.
    Acknowledged,
    /// The command ran and failed; see the report's ErrorChain.
    Error,
    /// The device could not parse the command.
    CommandFormatError,
    /// No result: the device is ready for a command (first request of a session).
    Idle,
    /// The device cannot run the command now (locked, busy); it will ask again later.
    NotNow,
    /// Anything else, kept exactly as sent.
    Unknown(String),
}

impl ReportStatus {
    pub fn parse(s: &str) -> Self {
        match s {
            "Acknowledged" => ReportStatus::Acknowledged,
            "Error" => ReportStatus::Error,
            "CommandFormatError" => ReportStatus::CommandFormatError,
            "Idle" => ReportStatus::Idle,
            "NotNow" => ReportStatus::NotNow,
            other => ReportStatus::Unknown(other.to_owned()),
        }
    }

    /// The wire spelling; `parse(x).as_str() == x` for every `x`.
    pub fn as_str(&self) -> &str {
        match self {
            ReportStatus::Acknowledged => "Acknowledged",
            ReportStatus::Error => "Error",
            ReportStatus::CommandFormatError => "CommandFormatError",
            ReportStatus::Idle => "Idle",
            ReportStatus::NotNow => "NotNow",
            ReportStatus::Unknown(s) => s,
        }
    }

    /// What this report means for the command it names, in the backend's vocabulary. `None` for
    /// Idle (it names no command) and for unknown statuses (the command stays as it was).
    pub fn command_status(&self) -> Option<CommandStatus> {
        match self {
            ReportStatus::Acknowledged => Some(CommandStatus::Acknowledged),
            ReportStatus::Error | ReportStatus::CommandFormatError => Some(CommandStatus::Error),
            ReportStatus::NotNow => Some(CommandStatus::NotNow),
            ReportStatus::Idle | ReportStatus::Unknown(_) => None,
        }
    }
}

impl std::fmt::Display for ReportStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in ["Acknowledged", "Error", "CommandFormatError", "Idle", "NotNow", "Pending", "idle", ""] {
            assert_eq!(ReportStatus::parse(s).as_str(), s);
        }
        assert_eq!(ReportStatus::parse("idle"), ReportStatus::Unknown("idle".into()));
    }
}
