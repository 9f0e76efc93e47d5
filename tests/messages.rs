//! Messages a person can act on (issue 18): a trap is one line naming the option to
//! change, inconsistent options are refused before any work, progress appears only on a
//! terminal, completions load in bash, and the exit codes are 0 / 1 / 2.

mod common;

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use erofs_host::sandbox::{BlobSource, CallError, DeviceSpec, Limits, SandboxedDevice};
use erofs_host::sandbox::{OpenOptions, Runtime, TrapCause};

const TIMEOUT: Duration = Duration::from_secs(120);

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn cat_large(extra: &[&str]) -> Output {
    let mut args = vec!["cat".to_string()];
    args.extend(device_args("large"));
    args.extend(extra.iter().map(|s| s.to_string()));
    run_host(&args, TIMEOUT)
}

#[test]
fn a_memory_limit_below_the_cache_is_refused_in_a_few_lines() {
    let out = cat_large(&["--memory-limit", "8M"]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "a usage error: {stderr}");
    assert!(out.stdout.is_empty(), "no work was done");
    assert!(stderr.lines().count() <= 3, "{stderr}");
    assert!(stderr.contains("--memory-limit 8M"), "{stderr}");
    assert!(stderr.contains("--decode-cache 32M"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn running_out_of_memory_names_the_cap_in_one_line() {
    let f = fixture("large");
    let spec = DeviceSpec {
        meta: Some(f.join("meta.erofs")),
        blob: BlobSource::Local(f.join("layer.tar.gz")),
        zinfo: Some(f.join("layer.zinfo")),
        trap_after_blob_reads: None,
        pins: Default::default(),
        options: OpenOptions {
            cache_bytes: Some(1 << 20),
            max_cursors: None,
            learn_interval: None,
            max_learned: None,
            header_samples: None,
            zinfo_sha256: None,
        },
    };
    let limits = Limits {
        memory: 32 << 20,
        call_timeout: Duration::from_secs(30),
    };
    let runtime: Arc<Runtime> = Runtime::load(&component()).unwrap();
    let mut dev = SandboxedDevice::open(runtime, spec, limits).unwrap();
    // A 48 MiB read cannot fit under a 32 MiB cap.
    let Err(CallError::Trap(trap)) = dev.pread(0, 48 << 20) else {
        panic!("a 48 MiB read under a 32 MiB cap must trap")
    };
    assert!(
        matches!(trap.cause, TrapCause::OutOfMemory { .. }),
        "{trap:?}"
    );
    let text = trap.to_string();
    assert!(
        text.starts_with("the component ran out of memory (--memory-limit 32M"),
        "{text}"
    );
    assert!(!text.contains('\n'), "{text}");
    // Trap recovery is unchanged: the next call works on a new instance.
    let want = expected_device("large");
    assert!(dev.pread(1_000_000, 4096).unwrap() == want[1_000_000..1_004_096]);
}

#[test]
fn the_deadline_names_call_timeout_in_one_line() {
    // 1 ms (one epoch tick at most) cannot decode a 4 MiB chunk of a gzip layer.
    let out = cat_large(&["--call-timeout", "0.001", "--decode-cache", "0"]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--call-timeout 0.001"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn backtraces_only_with_verbose() {
    let mut args = vec!["-v".to_string(), "cat".to_string()];
    args.extend(device_args("large"));
    args.extend(["--call-timeout".into(), "0.001".into()]);
    let out = run_host(&args, TIMEOUT);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("wasm backtrace"), "{stderr}");
    assert!(stderr.contains("--call-timeout 0.001"), "{stderr}");
}

/// Run `command` (a shell command line) under a pseudo-terminal with `script`; its
/// transcript, or None when `script` is missing.
fn under_a_terminal(command: &str) -> Option<String> {
    if Command::new("script").arg("--version").output().is_err() {
        skip(
            "progress under a terminal",
            "`script` (util-linux) is missing",
        );
        return None;
    }
    let out = Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .env("TERM", "xterm")
        .env("EROFS_HOST_PROGRESS_AFTER", "0")
        .env(
            "EROFS_WASM_CACHE_DIR",
            std::env::temp_dir().join("erofs-e2e-cwasm"),
        )
        .output()
        .expect("running script");
    assert!(out.status.success(), "{command}: {}", stderr_of(&out));
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn shell_line(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn host_line(before: &[&str], command: &str) -> String {
    let mut words = vec![host_bin().to_string_lossy().into_owned()];
    words.extend(before.iter().map(|s| s.to_string()));
    words.push(command.into());
    words.extend(device_args("large"));
    shell_line(&words)
}

#[test]
fn progress_appears_on_a_terminal_only() {
    let Some(shown) = under_a_terminal(&format!("{} > /dev/null", host_line(&[], "cat"))) else {
        return;
    };
    assert!(shown.contains("cat ") && shown.contains("MiB"), "{shown:?}");
    let Some(verify) = under_a_terminal(&host_line(&[], "verify")) else {
        return;
    };
    assert!(verify.contains("verifying the metadata"), "{verify:?}");
    assert!(verify.contains("ok: "), "{verify:?}");

    // --quiet silences it on a terminal too.
    let Some(quiet) = under_a_terminal(&format!("{} > /dev/null", host_line(&["--quiet"], "cat")))
    else {
        return;
    };
    assert!(!quiet.contains("MiB"), "{quiet:?}");

    // In a pipe: nothing on stderr, and stdout is the device alone.
    let mut args = vec!["cat".to_string()];
    args.extend(device_args("large"));
    let out = run_host_with(&args, &[("EROFS_HOST_PROGRESS_AFTER", "0")], None, TIMEOUT);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(out.stderr.is_empty(), "{}", stderr_of(&out));
    assert!(out.stdout == expected_device("large"));
}

#[test]
fn completions_load_in_bash() {
    let host = shell_line(&[host_bin().to_string_lossy().into_owned()]);
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source <({host} completions bash) && complete -p erofs-host"
        ))
        .output()
        .expect("running bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stdout.contains("erofs-host"), "{stdout}");
    for shell in ["zsh", "fish"] {
        let out = run_host(&["completions", shell], TIMEOUT);
        assert!(out.status.success(), "{shell}: {}", stderr_of(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("erofs-host"),
            "{shell}"
        );
    }
}

#[test]
fn man_pages_are_written() {
    let dir = TempDir::new("man");
    let out = run_host(&["man-pages".as_ref(), dir.path().as_os_str()], TIMEOUT);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let page = std::fs::read_to_string(dir.path().join("erofs-host.1")).unwrap();
    assert!(page.contains(".TH erofs-host"), "{page}");
    assert!(dir.path().join("erofs-host-cat.1").exists());
}

#[test]
fn exit_codes_are_0_1_2() {
    let mut ok = vec!["cat".to_string()];
    ok.extend(device_args("basic"));
    assert_eq!(run_host(&ok, TIMEOUT).status.code(), Some(0));
    assert_eq!(run_host(&["--help"], TIMEOUT).status.code(), Some(0));

    // An error: a file that does not exist.
    let mut missing = ok.clone();
    let meta = missing.iter().position(|a| a == "--tarindex").unwrap() + 1;
    missing[meta] = "/nonexistent/meta.erofs".into();
    let out = run_host(&missing, TIMEOUT);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));

    // Usage errors, clap's and ours.
    for extra in [
        &["--no-such-flag"][..],
        &["-o", "oci.bogus=1"],
        &["--call-timeout", "0"],
        &["--memory-limit", "1M"],
    ] {
        let mut args = ok.clone();
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = run_host(&args, TIMEOUT);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", stderr_of(&out));
        assert!(out.stdout.is_empty(), "{extra:?}");
    }
    assert_eq!(run_host(&["cat"], TIMEOUT).status.code(), Some(2));
    assert_eq!(
        run_host(&["no-such-command"], TIMEOUT).status.code(),
        Some(2)
    );
}
