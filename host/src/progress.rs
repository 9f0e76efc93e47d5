//! Progress on long work (indicatif), shown only where a person is watching:
//! - only when stderr is a terminal (piped or redirected output stays clean; indicatif
//!   also stays quiet for `TERM=dumb`);
//! - never with `--quiet`;
//! - only once the work has taken [`SHOW_AFTER`]: short work needs none, and a bar that
//!   flashes for 100 ms is noise.
//!
//! Each bar starts hidden; a helper thread reveals it after the delay unless the work
//! is done by then. [`Progress::finish`] clears it, so the terminal is left as it was.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long work runs before its progress appears: about the time after which a person
/// starts to wonder whether anything is happening.
pub const SHOW_AFTER: Duration = Duration::from_secs(1);

/// Overrides [`SHOW_AFTER`] (in seconds, e.g. `0`), so that the tests can see progress on
/// fixtures that take well under a second.
pub const SHOW_AFTER_ENV: &str = "EROFS_HOST_PROGRESS_AFTER";

/// Redraws per second of a spinner: smooth enough, and nothing next to the work.
const SPINNER_TICK: Duration = Duration::from_millis(100);

/// `--quiet`: no progress at all (set once, by `main`).
static QUIET: AtomicBool = AtomicBool::new(false);

/// Silence all progress (`--quiet`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// One progress display. Dropping it without [`Progress::finish`] clears it too.
pub struct Progress {
    bar: ProgressBar,
    /// True once the work is done: the revealing thread must then leave the bar hidden.
    done: Arc<Mutex<bool>>,
}

impl Progress {
    /// Bytes of `total`: `WHAT [bar] 12.5 MiB/48.3 MiB 400 MiB/s MESSAGE`.
    pub fn bytes(what: &str, total: u64) -> Progress {
        Self::start(
            Some(total),
            &format!("{what} {{wide_bar}} {{binary_bytes}}/{{binary_total_bytes}} {{binary_bytes_per_sec}} {{msg}}"),
            false,
        )
    }

    /// `total` things of some `unit` (`inodes`, `entries`): `WHAT [bar] 120/4000 UNIT`.
    pub fn count(what: &str, total: u64, unit: &str) -> Progress {
        Self::start(
            Some(total),
            &format!("{what} {{wide_bar}} {{human_pos}}/{{human_len}} {unit}"),
            false,
        )
    }

    /// Work of unknown size: a spinner, the time so far, and a message that
    /// [`Progress::set_message`] can change (e.g. bytes and entries so far).
    pub fn spinner(what: &str) -> Progress {
        Self::start(
            None,
            &format!("{{spinner}} {what} {{elapsed}} {{msg}}"),
            true,
        )
    }

    fn start(total: Option<u64>, template: &str, steady: bool) -> Progress {
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::hidden());
        match ProgressStyle::with_template(template) {
            Ok(style) => bar.set_style(style),
            // Our own templates: a bad one is a bug, shown in the debug log only.
            Err(e) => tracing::debug!("progress template {template:?}: {e}"),
        }
        let done = Arc::new(Mutex::new(false));
        let wanted = !QUIET.load(Ordering::Relaxed) && std::io::stderr().is_terminal();
        if wanted {
            match show_after() {
                // Shown at once: no thread, so even very short work draws (the tests).
                delay if delay.is_zero() => reveal(&bar, steady),
                delay => reveal_later(bar.clone(), done.clone(), delay, steady),
            }
        }
        Progress { bar, done }
    }

    /// The amount done so far.
    pub fn set_position(&self, position: u64) {
        self.bar.set_position(position);
    }

    /// `n` more done.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// The message at the end of the line.
    pub fn set_message(&self, message: String) {
        self.bar.set_message(message);
    }

    /// The work is done: clear the display.
    pub fn finish(self) {
        // Drop does it.
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        // State change: the work is over; the revealing thread finds `done` and stays away.
        *done = true;
        self.bar.finish_and_clear();
    }
}

/// [`SHOW_AFTER`], or the override from the environment.
fn show_after() -> Duration {
    let Some(text) = crate::env::non_empty(SHOW_AFTER_ENV) else {
        return SHOW_AFTER;
    };
    match text.to_str().and_then(|t| t.parse::<f64>().ok()) {
        Some(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs),
        _ => {
            tracing::warn!(
                "{SHOW_AFTER_ENV}={}: not a number of seconds; using {} s",
                text.to_string_lossy(),
                SHOW_AFTER.as_secs_f64()
            );
            SHOW_AFTER
        }
    }
}

/// Make `bar` visible: it draws on stderr from now on; a `steady` one (a spinner)
/// also redraws by itself.
fn reveal(bar: &ProgressBar, steady: bool) {
    // State change: the bar leaves its hidden target.
    bar.set_draw_target(ProgressDrawTarget::stderr());
    // First draw now (`tick` does nothing once a steady ticker runs).
    bar.tick();
    if steady {
        bar.enable_steady_tick(SPINNER_TICK);
    }
}

/// After `delay`, draw `bar` on stderr unless the work is done by then.
fn reveal_later(bar: ProgressBar, done: Arc<Mutex<bool>>, delay: Duration, steady: bool) {
    let spawned = std::thread::Builder::new()
        .name("progress".into())
        .spawn(move || {
            std::thread::sleep(delay);
            let done = done.lock().unwrap_or_else(|p| p.into_inner());
            if !*done {
                reveal(&bar, steady);
            }
        });
    if let Err(e) = spawned {
        tracing::debug!("no progress display (no thread: {e})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_or_not_a_terminal_never_draws() {
        // The test harness's stderr is captured (not a terminal): every bar stays hidden.
        let p = Progress::bytes("cat", 100);
        p.set_position(50);
        assert!(p.bar.is_hidden());
        p.finish();
        let s = Progress::spinner("verifying");
        s.set_message("1 entry".into());
        assert!(s.bar.is_hidden());
    }

    #[test]
    fn templates_are_valid() {
        for template in [
            "cat {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {msg}",
            "x {wide_bar} {human_pos}/{human_len} inodes",
            "{spinner} x {elapsed} {msg}",
        ] {
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
        }
    }
}
