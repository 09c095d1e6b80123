use std::fmt;

/// An error a plugin returns to the host.
///
/// It is deliberately just a message: the host adds the plugin's name, its
/// target and the message id before the error reaches an operator, so a plugin
/// should say *what* failed (`"connect to broker:4222: connection refused"`),
/// not where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message, as the host will see it.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with some context: `"{context}: {message}"`.
    #[must_use]
    pub fn context(self, context: impl fmt::Display) -> Self {
        Self {
            message: format!("{context}: {}", self.message),
        }
    }

    /// Consumes the error, returning its message.
    pub fn into_message(self) -> String {
        self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self { message }
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Self::new(err.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Self::new(err.to_string())
    }
}

impl From<Error> for String {
    fn from(err: Error) -> Self {
        err.message
    }
}

/// `Result` with the SDK's [`Error`].
pub type Result<T> = core::result::Result<T, Error>;
