//! The component's one error type: a [`Kind`] that says what went wrong and what a retry
//! can do, a message, and structured context (which input, which field, which offset,
//! which HTTP status) that code can test without matching strings.
//!
//! It converts to the WIT `error` variant in one place (`bindings.rs`, `From<Error>`),
//! and to and from `erofs_image::Error` here. Messages name inputs and limits in neutral
//! terms ("the decode cache", "the full-body limit"), never an embedder's command-line
//! flags: the embedder adds those.

use std::fmt;

/// What went wrong. The cases follow the WIT `error` variant (wit/reader.wit), plus
/// [`Kind::Internal`] for broken invariants of the component itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Malformed input (zinfo, metadata, gzip, tar, an HTTP response). Retrying will not
    /// help.
    BadInput,
    /// The EROFS metadata is inconsistent where an operation looked (WIT `corrupt`).
    Corrupt,
    /// A source failed or returned fewer bytes than it promised. Retrying may help.
    Io,
    /// The tar index does not describe this blob: a file's tar header is missing, or is
    /// for another name or size (issue 16). WIT `mismatch`; EIO for that file.
    Mismatch,
    /// A request outside the object.
    OutOfRange,
    /// Valid input using something not implemented here, or a request that is refused.
    Unsupported,
    /// Filesystem answers that are not failures: no such name, not a directory, ...
    NotFound,
    NotDirectory,
    IsDirectory,
    NotSymlink,
    NoAttribute,
    NameTooLong,
    /// One of the component's own invariants does not hold: a bug, not bad input, and
    /// nothing a retry fixes. The WIT has no case of its own for it; it travels as
    /// `bad-input` with a message that starts "internal error".
    Internal,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::BadInput => "bad input",
            Kind::Corrupt => "corrupt",
            Kind::Io => "I/O error",
            Kind::Mismatch => "mismatch",
            Kind::OutOfRange => "out of range",
            Kind::Unsupported => "unsupported",
            Kind::NotFound => "not found",
            Kind::NotDirectory => "not a directory",
            Kind::IsDirectory => "is a directory",
            Kind::NotSymlink => "not a symlink",
            Kind::NoAttribute => "no such attribute",
            Kind::NameTooLong => "name too long",
            Kind::Internal => "internal error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: Kind,
    /// What happened, with any context prefixes added on the way up.
    message: String,
    /// The input at fault: "meta", "blob", "zinfo", or a URL.
    pub file: Option<String>,
    /// The on-disk field at fault, e.g. "blkszbits", "checkpoint 3 out".
    pub field: Option<String>,
    /// The byte offset in `file` where the fault was found.
    pub offset: Option<u64>,
    /// The HTTP status of the last response, for errors of an HTTP exchange.
    pub http_status: Option<u16>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: Kind, msg: impl Into<String>) -> Self {
        Self {
            kind,
            message: msg.into(),
            file: None,
            field: None,
            offset: None,
            http_status: None,
        }
    }
    pub fn bad(msg: impl Into<String>) -> Self {
        Self::new(Kind::BadInput, msg)
    }
    pub fn io(msg: impl Into<String>) -> Self {
        Self::new(Kind::Io, msg)
    }
    pub fn out_of_range(msg: impl Into<String>) -> Self {
        Self::new(Kind::OutOfRange, msg)
    }
    pub fn unsupported(msg: impl Into<String>) -> Self {
        Self::new(Kind::Unsupported, msg)
    }
    pub fn corrupt(msg: impl Into<String>) -> Self {
        Self::new(Kind::Corrupt, msg)
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(Kind::Internal, msg)
    }

    /// Name the input at fault, unless an inner error already did.
    pub fn in_file(mut self, file: impl Into<String>) -> Self {
        if self.file.is_none() {
            self.file = Some(file.into());
        }
        self
    }
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
    pub fn at(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }
    pub fn with_status(mut self, status: u16) -> Self {
        self.http_status = Some(status);
        self
    }

    pub fn is(&self, kind: Kind) -> bool {
        self.kind == kind
    }

    /// The text without the kind: `file: message`.
    pub fn message(&self) -> String {
        match &self.file {
            Some(file) => format!("{file}: {}", self.message),
            None => self.message.clone(),
        }
    }

    /// The same error with `prefix: ` in front of the message.
    pub fn context(mut self, prefix: &str) -> Self {
        self.message = format!("{prefix}: {}", self.message);
        self
    }

    /// The same error with another message, context kept.
    pub fn with_message(mut self, msg: impl Into<String>) -> Self {
        self.message = msg.into();
        self
    }

    /// The text an embedder sees (the WIT `error` carries only a string): for internal
    /// errors, a note that this is a bug.
    pub fn wit_text(&self) -> String {
        match self.kind {
            Kind::Internal => format!(
                "internal error (a bug in the erofs-wasm component): {}",
                self.message()
            ),
            _ => self.message(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.label(), self.message())
    }
}

impl std::error::Error for Error {}

/// An EROFS reader error becomes the case of the same meaning.
impl From<erofs_image::Error> for Error {
    fn from(e: erofs_image::Error) -> Self {
        use erofs_image::Error as E;
        match e {
            E::Corrupt(m) => Error::corrupt(m),
            E::Io(m) => Error::io(m),
            E::Unsupported(m) => Error::unsupported(m),
            E::Range(m) => Error::out_of_range(m),
            E::NotFound => Error::new(Kind::NotFound, "no such entry"),
            E::NotDir => Error::new(Kind::NotDirectory, "not a directory"),
            E::IsDir => Error::new(Kind::IsDirectory, "is a directory"),
            E::NotSymlink => Error::new(Kind::NotSymlink, "not a symlink"),
            E::NoAttr => Error::new(Kind::NoAttribute, "no such extended attribute"),
            E::NameTooLong => Error::new(Kind::NameTooLong, "name longer than 255 bytes"),
        }
    }
}

impl Error {
    /// This error as the EROFS reader's, for a failed device read. The reader passes a
    /// read error up unchanged; a reader of the device that keeps the original (see
    /// `tarindex::Device::take_read_error`) gets the structured error back.
    pub fn to_image(&self) -> erofs_image::Error {
        use erofs_image::Error as E;
        let m = self.wit_text();
        match self.kind {
            Kind::Corrupt | Kind::BadInput | Kind::Mismatch => E::Corrupt(m),
            Kind::OutOfRange => E::Range(m),
            Kind::Unsupported => E::Unsupported(m),
            Kind::NotFound => E::NotFound,
            Kind::NotDirectory => E::NotDir,
            Kind::IsDirectory => E::IsDir,
            Kind::NotSymlink => E::NotSymlink,
            Kind::NoAttribute => E::NoAttr,
            Kind::NameTooLong => E::NameTooLong,
            Kind::Io | Kind::Internal => E::Io(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_context_compose() {
        let e = Error::bad("field `x` is 3")
            .context("checkpoint 2")
            .in_file("zinfo")
            .in_file("outer")
            .at(40);
        assert_eq!(e.message(), "zinfo: checkpoint 2: field `x` is 3");
        assert_eq!(
            e.to_string(),
            "bad input: zinfo: checkpoint 2: field `x` is 3"
        );
        assert_eq!(e.offset, Some(40));
    }

    #[test]
    fn image_corrupt_stays_corrupt() {
        let e = Error::from(erofs_image::Error::Corrupt("nid 7".into()));
        assert!(e.is(Kind::Corrupt));
        assert!(Error::internal("x")
            .wit_text()
            .starts_with("internal error"));
    }
}
