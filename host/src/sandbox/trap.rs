//! Why the component trapped, in one line that names the option to change.
//!
//! A trap arrives from wasmtime as an error whose text is a wasm backtrace (dozens of
//! lines of mangled names) ending in `wasm trap: …`. That report is kept for `-v` /
//! `RUST_LOG=debug`; the message is built from three facts gathered during the call:
//!
//! - the memory cap ([`MemoryCap`]) records a growth it refused: the guest ran out of
//!   memory under `--memory-limit` (its allocator then aborts, which wasmtime reports as
//!   an `unreachable` instruction);
//! - wasmtime's trap code `Interrupt` is the epoch deadline: `--call-timeout`;
//! - the guest's stderr ([`super::guest_stderr`]) holds a panic's message, or the size of
//!   an allocation that failed.

use std::time::Duration;

use wasmtime::{ResourceLimiter, Store, StoreLimits};

use super::runtime::StoreState;
use crate::defaults;

/// The store's resource limiter: wasmtime's [`StoreLimits`], plus a record of the last
/// memory growth it refused (so that a trap after it can be blamed on the cap).
pub struct MemoryCap {
    limits: StoreLimits,
    /// The total size of the refused growth, in bytes, since the last [`Self::clear`].
    refused: Option<usize>,
}

impl MemoryCap {
    pub fn new(limits: StoreLimits) -> Self {
        MemoryCap {
            limits,
            refused: None,
        }
    }

    /// Forget an earlier refusal (at the start of each call).
    pub fn clear(&mut self) {
        self.refused = None;
    }

    /// The size a linear memory was refused to grow to during this call, if any.
    pub fn refused(&self) -> Option<usize> {
        self.refused
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if !allowed {
            // State change: this call is now one that hit the cap.
            self.refused = Some(desired);
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// The settings a trap message names.
#[derive(Debug, Clone, Copy)]
pub struct TrapSettings {
    /// `--memory-limit`.
    pub memory_limit: u64,
    /// `--decode-cache`, for a device (an indexer has none).
    pub decode_cache: Option<u64>,
    /// `--call-timeout`.
    pub call_timeout: Duration,
}

/// Why a call trapped.
#[derive(Debug, Clone, PartialEq)]
pub enum TrapCause {
    /// The guest needed more memory than `--memory-limit` allows.
    OutOfMemory {
        limit: u64,
        cache: Option<u64>,
        /// The allocation that failed, from the guest's own report.
        allocation: Option<u64>,
    },
    /// The call ran past `--call-timeout`.
    Deadline { timeout: Duration },
    /// The guest panicked, with this message (and its source location, if given).
    Panic { message: String },
    /// Another wasm trap (its code's description), or an error the host raised during the
    /// call (an injected fault, a broken host resource).
    Other(String),
}

/// A trap: the one-line cause, and wasmtime's full report for the debug log.
#[derive(Debug, Clone)]
pub struct Trap {
    pub cause: TrapCause,
    /// wasmtime's report with the wasm backtrace, and what the guest wrote on stderr.
    pub detail: String,
}

impl Trap {
    /// A trap with nothing more to say than `text` (no instance, an empty pool).
    pub fn other(text: impl Into<String>) -> Trap {
        let text = text.into();
        Trap {
            detail: text.clone(),
            cause: TrapCause::Other(text),
        }
    }

    /// Classify wasmtime's `error` for a call that ran with `settings`, given the growth
    /// the memory cap refused during the call and what the guest wrote on stderr.
    pub fn classify(
        error: &wasmtime::Error,
        refused_growth: Option<usize>,
        stderr: &str,
        settings: TrapSettings,
    ) -> Trap {
        let allocation = failed_allocation(stderr);
        let code = error.downcast_ref::<wasmtime::Trap>().copied();
        let cause = if refused_growth.is_some() || allocation.is_some() {
            TrapCause::OutOfMemory {
                limit: settings.memory_limit,
                cache: settings.decode_cache,
                allocation,
            }
        } else if code == Some(wasmtime::Trap::Interrupt) {
            TrapCause::Deadline {
                timeout: settings.call_timeout,
            }
        } else if let Some(message) = panic_message(stderr) {
            TrapCause::Panic { message }
        } else {
            // The root cause is the trap code's text or the host's own error, without
            // the backtrace that wasmtime adds as context.
            TrapCause::Other(error.root_cause().to_string())
        };
        let mut detail = format!("{error:?}");
        if !stderr.trim().is_empty() {
            detail.push_str("\ncomponent stderr:\n");
            detail.push_str(stderr.trim_end());
        }
        Trap { cause, detail }
    }
}

impl std::fmt::Display for Trap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cause {
            TrapCause::OutOfMemory {
                limit,
                cache,
                allocation,
            } => out_of_memory(f, *limit, *cache, *allocation),
            TrapCause::Deadline { timeout } => write!(
                f,
                "the component was interrupted: the call took longer than --call-timeout {} s",
                timeout.as_secs_f64()
            ),
            TrapCause::Panic { message } => write!(f, "the component panicked: {message}"),
            TrapCause::Other(text) => write!(f, "the component trapped: {text}"),
        }
    }
}

/// The out-of-memory line: the cap, and the cache when it is what does not fit.
fn out_of_memory(
    f: &mut std::fmt::Formatter<'_>,
    limit: u64,
    cache: Option<u64>,
    allocation: Option<u64>,
) -> std::fmt::Result {
    write!(
        f,
        "the component ran out of memory (--memory-limit {}; ",
        format_size(limit)
    )?;
    match cache {
        Some(cache) if cache >= limit => {
            return write!(f, "--decode-cache {} alone needs more)", format_size(cache));
        }
        Some(cache) if cache.saturating_add(defaults::MEMORY_FIXED) > limit => {
            return write!(
                f,
                "--decode-cache {} plus the {} the component needs besides it need more)",
                format_size(cache),
                format_size(defaults::MEMORY_FIXED)
            );
        }
        _ => {}
    }
    match allocation {
        Some(n) => write!(f, "an allocation of {} did not fit", format_size(n))?,
        None => write!(f, "the call needed more")?,
    }
    if let Some(cache) = cache {
        write!(f, " beside --decode-cache {}", format_size(cache))?;
    }
    write!(f, "; raise --memory-limit)")
}

/// Start a call in `store`: forget the last call's refused growth, and pass on what the
/// guest wrote to stderr since (nothing, normally) to the debug log.
pub(crate) fn begin_call(store: &mut Store<StoreState>) {
    store.data_mut().limits.clear();
    log_guest_stderr(store);
}

/// After a call that returned: pass on what the guest wrote to stderr.
pub(crate) fn log_guest_stderr(store: &Store<StoreState>) {
    let text = store.data().stderr.take();
    if !text.is_empty() {
        tracing::debug!("component stderr: {}", text.trim_end());
    }
}

/// The trap `error` of a call in `store`, classified; wasmtime's report with the wasm
/// backtrace goes to the debug log (`-v`, `RUST_LOG=debug`).
pub(crate) fn trap_in(
    store: &Store<StoreState>,
    error: &wasmtime::Error,
    settings: TrapSettings,
) -> Trap {
    let state = store.data();
    let trap = Trap::classify(
        error,
        state.limits.refused(),
        &state.stderr.take(),
        settings,
    );
    tracing::debug!("{trap}. {}", trap.detail);
    trap
}

/// `N` of std's `memory allocation of N bytes failed` (the last such line).
fn failed_allocation(stderr: &str) -> Option<u64> {
    stderr.lines().rev().find_map(|line| {
        line.trim()
            .strip_prefix("memory allocation of ")?
            .strip_suffix(" bytes failed")?
            .parse()
            .ok()
    })
}

/// The message of the last panic in std's report:
/// `thread 'NAME' panicked at FILE:LINE:COL:` then the message lines, then perhaps a
/// `note: …` line. Returned as `MESSAGE (at FILE:LINE:COL)`, on one line.
fn panic_message(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr.lines().collect();
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("thread '") && l.contains("' panicked at "))?;
    let header = lines.get(start)?;
    let location = header
        .split_once("' panicked at ")
        .map(|(_, at)| at.trim_end_matches(':').trim())
        .unwrap_or_default();
    let message: Vec<&str> = lines
        .get(start + 1..)
        .unwrap_or_default()
        .iter()
        .take_while(|l| !l.starts_with("note: "))
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    let message = if message.is_empty() {
        "(no message)".to_string()
    } else {
        message.join(" / ")
    };
    Some(if location.is_empty() {
        message
    } else {
        format!("{message} (at {location})")
    })
}

/// A byte count in the units `--memory-limit` takes: `8M`, `1G`, `512K`, else bytes
/// with one decimal in the largest unit (`48.5M`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
    for (shift, unit) in UNITS {
        let one = 1u64 << shift;
        if bytes >= one {
            return if bytes.is_multiple_of(one) {
                format!("{}{unit}", bytes >> shift)
            } else {
                format!("{:.1}{unit}", bytes as f64 / one as f64)
            };
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(memory_limit: u64, decode_cache: Option<u64>) -> TrapSettings {
        TrapSettings {
            memory_limit,
            decode_cache,
            call_timeout: Duration::from_millis(1500),
        }
    }

    fn trap(cause: TrapCause) -> String {
        Trap {
            cause,
            detail: String::new(),
        }
        .to_string()
    }

    #[test]
    fn sizes_read_as_options() {
        assert_eq!(format_size(8 << 20), "8M");
        assert_eq!(format_size(1 << 30), "1G");
        assert_eq!(format_size(512 << 10), "512K");
        assert_eq!(format_size((48 << 20) + (512 << 10)), "48.5M");
        assert_eq!(format_size(100), "100");
    }

    #[test]
    fn out_of_memory_names_the_cap_and_the_cache() {
        let oom = |limit, cache, allocation| TrapCause::OutOfMemory {
            limit,
            cache,
            allocation,
        };
        assert_eq!(
            trap(oom(8 << 20, Some(32 << 20), None)),
            "the component ran out of memory (--memory-limit 8M; --decode-cache 32M alone needs more)"
        );
        assert_eq!(
            trap(oom(40 << 20, Some(32 << 20), None)),
            "the component ran out of memory (--memory-limit 40M; --decode-cache 32M plus the 16M the component needs besides it need more)"
        );
        assert_eq!(
            trap(oom(64 << 20, Some(1 << 20), Some(48 << 20))),
            "the component ran out of memory (--memory-limit 64M; an allocation of 48M did not fit beside --decode-cache 1M; raise --memory-limit)"
        );
    }

    #[test]
    fn out_of_memory_without_a_cache() {
        // An indexer has no cache to name.
        let text = trap(TrapCause::OutOfMemory {
            limit: 256 << 20,
            cache: None,
            allocation: None,
        });
        assert_eq!(
            text,
            "the component ran out of memory (--memory-limit 256M; the call needed more; raise --memory-limit)"
        );
    }

    #[test]
    fn the_deadline_names_call_timeout() {
        let text = trap(TrapCause::Deadline {
            timeout: Duration::from_millis(1500),
        });
        assert_eq!(
            text,
            "the component was interrupted: the call took longer than --call-timeout 1.5 s"
        );
    }

    #[test]
    fn a_panic_gives_its_message() {
        let stderr = "thread '<unnamed>' panicked at src/gzran/cursor.rs:10:5:\nindex out of bounds: the len is 3 but the index is 7\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            panic_message(stderr).as_deref(),
            Some("index out of bounds: the len is 3 but the index is 7 (at src/gzran/cursor.rs:10:5)")
        );
        let t = Trap::classify(
            &wasmtime::Error::new(wasmtime::Trap::UnreachableCodeReached),
            None,
            stderr,
            settings(1 << 30, None),
        );
        assert!(
            matches!(&t.cause, TrapCause::Panic { message } if message.starts_with("index out of bounds")),
            "{t:?}"
        );
        assert_eq!(panic_message("nothing here\n"), None);
    }

    #[test]
    fn classification() {
        let unreachable = wasmtime::Error::new(wasmtime::Trap::UnreachableCodeReached);
        // A refused growth is out of memory, whatever the trap code.
        let t = Trap::classify(
            &unreachable,
            Some(9 << 20),
            "",
            settings(8 << 20, Some(32 << 20)),
        );
        assert!(matches!(t.cause, TrapCause::OutOfMemory { .. }), "{t:?}");
        // So is std's allocation-failure line, with the size it names.
        let t = Trap::classify(
            &unreachable,
            None,
            "memory allocation of 50331648 bytes failed\n",
            settings(1 << 30, None),
        );
        assert_eq!(
            t.cause,
            TrapCause::OutOfMemory {
                limit: 1 << 30,
                cache: None,
                allocation: Some(48 << 20)
            }
        );
        let t = Trap::classify(
            &wasmtime::Error::new(wasmtime::Trap::Interrupt),
            None,
            "",
            settings(1 << 30, None),
        );
        assert!(matches!(t.cause, TrapCause::Deadline { .. }), "{t:?}");
        assert!(t.to_string().contains("--call-timeout 1.5 s"), "{t}");
        // A host error keeps its own text, without wasmtime's context.
        let host = wasmtime::Error::msg("injected fault: trap on a read of blob")
            .context("error while executing at wasm backtrace:\n 0: 0x1 - f");
        let t = Trap::classify(&host, None, "", settings(1 << 30, None));
        assert_eq!(
            t.to_string(),
            "the component trapped: injected fault: trap on a read of blob"
        );
        assert!(!t.to_string().contains('\n'));
    }
}
