//! The one error type of validation: it names the field and the rule, never the value.

/// Why a code request was refused. `field` is the JSON field name (`"$"` for the document as a
/// whole); `message` states the rule that was broken. Neither ever contains the submitted value,
/// because the value may be a phone number or a code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}
