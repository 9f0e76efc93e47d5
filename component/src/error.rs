//! The component's one error type. It mirrors the WIT `error` variant, so the bindings
//! layer converts it case by case and the message always reaches the embedder intact.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Malformed input (zinfo, metadata, gzip, tar). The message names file and field.
    BadInput(String),
    /// A source failed or returned fewer bytes than it promised.
    Io(String),
    /// A request outside the object.
    OutOfRange(String),
    /// Valid input using something not implemented here.
    Unsupported(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn bad(msg: impl Into<String>) -> Self {
        Error::BadInput(msg.into())
    }
    pub fn io(msg: impl Into<String>) -> Self {
        Error::Io(msg.into())
    }

    /// The message without the case, for prefixing with more context.
    pub fn message(&self) -> &str {
        match self {
            Error::BadInput(m) | Error::Io(m) | Error::OutOfRange(m) | Error::Unsupported(m) => m,
        }
    }

    /// The same case with `prefix: ` in front of the message.
    pub fn context(self, prefix: &str) -> Self {
        let add = |m: String| format!("{prefix}: {m}");
        match self {
            Error::BadInput(m) => Error::BadInput(add(m)),
            Error::Io(m) => Error::Io(add(m)),
            Error::OutOfRange(m) => Error::OutOfRange(add(m)),
            Error::Unsupported(m) => Error::Unsupported(add(m)),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Error::BadInput(_) => "bad input",
            Error::Io(_) => "I/O error",
            Error::OutOfRange(_) => "out of range",
            Error::Unsupported(_) => "unsupported",
        };
        write!(f, "{kind}: {}", self.message())
    }
}

impl std::error::Error for Error {}
