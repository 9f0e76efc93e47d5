//! Usage errors: options that cannot work together, or a missing one, found after clap
//! parsed the command line but before any work. They end the process with exit code
//! [`EXIT_USAGE`] (2), as clap's own usage errors do; every other failure exits with 1.

/// Exit code of a usage error: clap's (`clap::Error::exit` uses 2).
pub const EXIT_USAGE: u8 = 2;

/// An error in how the command was called; the message names the options and values.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A usage error as an `anyhow::Error` (for `return Err(usage(...))`).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// True when `error`, or anything it wraps, is a usage error.
pub fn is_usage(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.is::<UsageError>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn usage_errors_are_found_under_context() {
        let e: anyhow::Result<()> = Err(usage("--a 1 and --b 2 do not go together"));
        let e = e.context("opening the device").unwrap_err();
        assert!(is_usage(&e));
        assert!(!is_usage(&anyhow::anyhow!("an I/O error")));
    }
}
