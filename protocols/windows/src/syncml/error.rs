//! Why a SyncML message could not be read.

/// A message that is not acceptable SyncML. `reason()` is a stable label for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the body is not UTF-8")]
    NotUtf8,
    #[error("malformed XML: {0}")]
    Malformed(String),
    #[error("a DOCTYPE declaration is not accepted (entities are never expanded)")]
    DocType,
    #[error("undefined entity &{0};")]
    UndefinedEntity(String),
    #[error("processing instructions are not accepted")]
    ProcessingInstruction,
    #[error("elements nest deeper than {0}")]
    TooDeep(usize),
    #[error("more than {0} elements")]
    TooManyElements(usize),
    #[error("the root element is <{0}>, not <SyncML>")]
    NotSyncMl(String),
    #[error("<{parent}> has no <{element}>")]
    Missing { parent: &'static str, element: &'static str },
    #[error("<{element}> has an invalid value {value:?}")]
    Invalid { element: &'static str, value: String },
}

impl DecodeError {
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::NotUtf8 => "not_utf8",
            DecodeError::Malformed(_) => "malformed_xml",
            DecodeError::DocType => "doctype_refused",
            DecodeError::UndefinedEntity(_) => "entity_refused",
            DecodeError::ProcessingInstruction => "processing_instruction_refused",
            DecodeError::TooDeep(_) => "too_deep",
            DecodeError::TooManyElements(_) => "too_many_elements",
            DecodeError::NotSyncMl(_) => "not_syncml",
            DecodeError::Missing { .. } => "missing_element",
            DecodeError::Invalid { .. } => "invalid_value",
        }
    }
}
