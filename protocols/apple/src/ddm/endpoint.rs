//! The `Endpoint` of a `DeclarativeManagement` check-in: `tokens`, `declaration-items`,
//! `status`, or `declaration/<class>/<identifier>`.

use super::DeclarationClass;

/// What the device asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The server's current synchronization tokens.
    Tokens,
    /// The manifest: every declaration's `Identifier` and `ServerToken`, by class.
    DeclarationItems,
    /// A status report, in the message's `Data`.
    Status,
    /// One declaration.
    Declaration { class: DeclarationClass, identifier: String },
}

/// An `Endpoint` this build cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// `declaration/<class>/…` with a class other than activation, asset, configuration,
    /// management.
    #[error("declaration class `{0}` is not one of activation, asset, configuration, management")]
    UnknownClass(String),
    /// `declaration/<class>` or `declaration/<class>/` with no identifier.
    #[error("endpoint `{0}` names no declaration identifier")]
    NoIdentifier(String),
    /// Anything else.
    #[error("endpoint `{0}` is not tokens, declaration-items, status or declaration/<class>/<identifier>")]
    Unknown(String),
}

impl EndpointError {
    /// A short, stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            EndpointError::UnknownClass(_) => "unknown_declaration_class",
            EndpointError::NoIdentifier(_) => "no_declaration_identifier",
            EndpointError::Unknown(_) => "unknown_endpoint",
        }
    }
}

impl Endpoint {
    /// Parses the wire value. The identifier is everything after the class and its slash, so an
    /// identifier that itself contains `/` is kept whole.
    pub fn parse(s: &str) -> Result<Endpoint, EndpointError> {
        match s {
            "tokens" => return Ok(Endpoint::Tokens),
            "declaration-items" => return Ok(Endpoint::DeclarationItems),
            "status" => return Ok(Endpoint::Status),
            _ => {}
        }
        let Some(rest) = s.strip_prefix("declaration/") else {
            return Err(EndpointError::Unknown(s.to_owned()));
        };
        let (class, identifier) = rest.split_once('/').unwrap_or((rest, ""));
        let class = DeclarationClass::from_path(class).ok_or_else(|| EndpointError::UnknownClass(class.to_owned()))?;
        if identifier.is_empty() {
            return Err(EndpointError::NoIdentifier(s.to_owned()));
        }
        Ok(Endpoint::Declaration { class, identifier: identifier.to_owned() })
    }

    /// The wire value, for logs and event data.
    pub fn as_wire(&self) -> String {
        match self {
            Endpoint::Tokens => "tokens".into(),
            Endpoint::DeclarationItems => "declaration-items".into(),
            Endpoint::Status => "status".into(),
            Endpoint::Declaration { class, identifier } => format!("declaration/{}/{identifier}", class.path()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(Endpoint::parse("tokens"), Ok(Endpoint::Tokens));
        assert_eq!(Endpoint::parse("declaration-items"), Ok(Endpoint::DeclarationItems));
        assert_eq!(Endpoint::parse("status"), Ok(Endpoint::Status));
        let e = Endpoint::parse("declaration/configuration/a/b").unwrap();
        assert_eq!(e, Endpoint::Declaration { class: DeclarationClass::Configuration, identifier: "a/b".into() });
        assert_eq!(e.as_wire(), "declaration/configuration/a/b");
        for (s, reason) in [
            ("declaration/profile/x", "unknown_declaration_class"),
            ("declaration/asset/", "no_declaration_identifier"),
            ("declaration/asset", "no_declaration_identifier"),
            ("Tokens", "unknown_endpoint"),
            ("", "unknown_endpoint"),
            ("declarations/asset/x", "unknown_endpoint"),
        ] {
            assert_eq!(Endpoint::parse(s).unwrap_err().reason(), reason, "{s}");
        }
    }
}
