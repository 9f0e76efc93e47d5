//! Why a call into the sandbox failed, and the host's one table from the component's
//! WIT `error` variant to errno (as `wit/reader.wit` documents it for each case). Every
//! bridge (FUSE, the loop backend's device file, NBD) takes its errno from here.

use super::runtime::WitError;
use super::trap::Trap;

/// Why a call failed.
#[derive(Debug)]
pub enum CallError {
    /// The component returned an error.
    Component(WitError),
    /// The component trapped; the instance was discarded.
    Trap(Trap),
}

/// The errno for each WIT `error` case; the comment on each case in `wit/reader.wit`
/// names the same value.
pub fn wit_errno(e: &WitError) -> i32 {
    match e {
        // Malformed input (zinfo, metadata, gzip, tar) and inconsistent metadata are both
        // a damaged structure: "Structure needs cleaning". Retrying will not help.
        WitError::BadInput(_) | WitError::Corrupt(_) => libc::EUCLEAN,
        // A source failed or came up short: an I/O error, which a retry may cure.
        WitError::Io(_) => libc::EIO,
        // The index points this file at bytes that are not its own (issue 16): the
        // file cannot be read, as if its blocks were unreadable. Only that file fails.
        WitError::Mismatch(_) => libc::EIO,
        WitError::OutOfRange(_) => libc::EINVAL,
        WitError::Unsupported(_) => libc::EOPNOTSUPP,
        WitError::NotFound => libc::ENOENT,
        WitError::NotDirectory => libc::ENOTDIR,
        WitError::IsDirectory => libc::EISDIR,
        WitError::NotSymlink => libc::EINVAL,
        WitError::NoAttribute => libc::ENODATA,
        WitError::NameTooLong => libc::ENAMETOOLONG,
    }
}

impl CallError {
    /// The errno a filesystem or block bridge should report. A trap is an I/O error:
    /// the instance is rebuilt, so the same request may then succeed.
    pub fn errno(&self) -> i32 {
        match self {
            CallError::Component(e) => wit_errno(e),
            CallError::Trap(_) => libc::EIO,
        }
    }

    /// True for failures of the image, a source or the sandbox (worth a log line); false
    /// for the ordinary answers of a filesystem (no such name, no such attribute...) and
    /// for requests the reader declines (out of range, unsupported).
    pub fn is_failure(&self) -> bool {
        match self {
            CallError::Component(e) => matches!(
                e,
                WitError::BadInput(_)
                    | WitError::Io(_)
                    | WitError::Corrupt(_)
                    | WitError::Mismatch(_)
            ),
            CallError::Trap(_) => true,
        }
    }

    /// True when the request itself was outside the object (NBD reports it as EINVAL
    /// rather than as an I/O error).
    pub fn is_out_of_range(&self) -> bool {
        matches!(self, CallError::Component(WitError::OutOfRange(_)))
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Component(e) => write!(f, "{}", describe(e)),
            // One line that names the cause and the option to change.
            CallError::Trap(t) => write!(f, "{t}"),
        }
    }
}

impl std::error::Error for CallError {}

/// A WIT error as a sentence for messages.
pub fn describe(e: &WitError) -> String {
    match e {
        WitError::BadInput(m) => format!("bad input: {m}"),
        WitError::Io(m) => format!("I/O error: {m}"),
        WitError::OutOfRange(m) => format!("out of range: {m}"),
        WitError::Unsupported(m) => format!("unsupported: {m}"),
        WitError::Corrupt(m) => format!("corrupt image: {m}"),
        // The message says it all: "tarindex does not match the blob: ...".
        WitError::Mismatch(m) => m.clone(),
        WitError::NotFound => "no such file or directory".into(),
        WitError::NotDirectory => "not a directory".into(),
        WitError::IsDirectory => "is a directory".into(),
        WitError::NotSymlink => "not a symlink".into(),
        WitError::NoAttribute => "no such extended attribute".into(),
        WitError::NameTooLong => "name too long".into(),
    }
}

/// A component answer that breaks the contract (too long, or short before the end): the
/// host refuses it rather than pass it on. It is an I/O error for that request.
pub(crate) fn reply_error(text: String) -> CallError {
    CallError::Component(WitError::Io(format!("refused a component reply: {text}")))
}

/// Checks a `pread` reply of `got` bytes for `len` at `offset` against `expected`, the
/// length the contract allows (`len`, or what is left before the device's end).
pub(crate) fn check_reply_length(
    what: &str,
    offset: u64,
    len: u32,
    got: usize,
    expected: u64,
) -> Result<(), CallError> {
    if got as u64 == expected {
        return Ok(());
    }
    Err(reply_error(format!(
        "{what} of {len} bytes at offset {offset}: the component returned {got} bytes, not {expected}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wit_errno_table() {
        let text = |_: ()| String::from("x");
        assert_eq!(wit_errno(&WitError::Corrupt(text(()))), libc::EUCLEAN);
        assert_eq!(wit_errno(&WitError::BadInput(text(()))), libc::EUCLEAN);
        assert_eq!(wit_errno(&WitError::Io(text(()))), libc::EIO);
        assert_eq!(wit_errno(&WitError::Mismatch(text(()))), libc::EIO);
        assert!(CallError::Component(WitError::Mismatch(text(()))).is_failure());
        assert_eq!(wit_errno(&WitError::OutOfRange(text(()))), libc::EINVAL);
        assert_eq!(
            wit_errno(&WitError::Unsupported(text(()))),
            libc::EOPNOTSUPP
        );
        assert_eq!(wit_errno(&WitError::NotFound), libc::ENOENT);
        assert_eq!(wit_errno(&WitError::NoAttribute), libc::ENODATA);
        assert_eq!(CallError::Trap(Trap::other("x")).errno(), libc::EIO);
        assert!(CallError::Trap(Trap::other("x")).is_failure());
        assert!(!CallError::Component(WitError::NotFound).is_failure());
    }

    #[test]
    fn reply_lengths_are_held_to_the_contract() {
        use super::check_reply_length;
        assert!(check_reply_length("pread", 0, 10, 10, 10).is_ok());
        assert!(check_reply_length("pread", 95, 10, 5, 5).is_ok());
        let long = check_reply_length("pread", 0, 10, 11, 10).unwrap_err();
        assert!(
            long.to_string().contains("returned 11 bytes, not 10"),
            "{long}"
        );
        assert!(check_reply_length("pread", 0, 10, 9, 10).is_err());
    }
}
