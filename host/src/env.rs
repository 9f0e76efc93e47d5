//! Environment variables that name paths. An empty value means unset: `FOO= cmd` is how
//! shells clear a variable for one command, and an empty path would otherwise mean the
//! current directory (a precompiled `.cwasm` once appeared in a checkout's root that way).

use std::ffi::OsString;
use std::path::PathBuf;

/// The variable's value, if it is set and not empty.
pub(crate) fn non_empty(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// The variable as a path, if it is set and not empty.
pub(crate) fn path(name: &str) -> Option<PathBuf> {
    non_empty(name).map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    #[test]
    fn empty_means_unset() {
        // Names no other test uses; set and read in this one test only.
        std::env::set_var("EROFS_HOST_TEST_EMPTY_PATH", "");
        assert_eq!(super::path("EROFS_HOST_TEST_EMPTY_PATH"), None);
        std::env::set_var("EROFS_HOST_TEST_SET_PATH", "/x");
        assert_eq!(
            super::path("EROFS_HOST_TEST_SET_PATH"),
            Some(std::path::PathBuf::from("/x"))
        );
        assert_eq!(super::path("EROFS_HOST_TEST_NEVER_SET"), None);
    }
}
