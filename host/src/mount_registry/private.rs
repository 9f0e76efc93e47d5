//! Files and directories only their owner may change: the state directory and what is in
//! it (registrations, logs), and the precompiled-component cache. Another local user who
//! can plant a file there can steer `umount` (which pid it signals, what it unmounts),
//! redirect a daemon's log, or (the cache) have native code run. So every such path is
//! checked before use, and refused with a message that names it, its owner and its mode:
//!
//! - a directory: not a symlink, owned by the effective uid, and (state) mode 0700 or
//!   (cache) not writable by group or others; its parent must not let others replace it
//!   (not writable by others unless sticky, like /tmp);
//! - a file: opened with `O_NOFOLLOW` (a planted symlink fails with ELOOP), then checked
//!   on the open descriptor (no race between the check and the use): a regular file,
//!   owned by the effective uid, not writable by group or others.

use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// How strict a directory check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirRule {
    /// Mode 0700 exactly in its permission bits: nobody else may even list it.
    Private,
    /// Not writable by group or others (reading is harmless).
    NotWritableByOthers,
}

/// Make `dir` (mode 0700) if it is missing, then check it with `rule`. `what` names the
/// directory in messages ("the state directory").
pub fn ensure_dir(dir: &Path, rule: DirRule, what: &str) -> Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create {what}'s parent", parent.display()))?;
        check_parent(parent, dir, what)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(e).with_context(|| format!("{}: cannot create {what}", dir.display()))
        }
    }
    let md = std::fs::symlink_metadata(dir)
        .with_context(|| format!("{}: cannot stat {what}", dir.display()))?;
    check_dir(dir, &md, rule, what)
}

/// The checks of [`ensure_dir`] on metadata already read (not following a symlink).
pub fn check_dir(dir: &Path, md: &Metadata, rule: DirRule, what: &str) -> Result<()> {
    let me = euid();
    if md.file_type().is_symlink() {
        bail!(
            "{}: {what} is a symlink (to {}); refusing it: someone could point it anywhere. Remove it{}",
            dir.display(),
            std::fs::read_link(dir).map(|t| t.display().to_string()).unwrap_or_else(|e| e.to_string()),
            hint(what)
        );
    }
    if !md.is_dir() {
        bail!(
            "{}: {what} is not a directory; remove it{}",
            dir.display(),
            hint(what)
        );
    }
    if md.uid() != me {
        bail!(
            "{}: {what} belongs to uid {}, not to you (uid {me}); refusing it: its owner could plant files in it. Remove it{}",
            dir.display(),
            md.uid(),
            hint(what)
        );
    }
    let mode = md.permissions().mode() & 0o7777;
    let loose = match rule {
        DirRule::Private => mode & 0o077 != 0,
        DirRule::NotWritableByOthers => mode & 0o022 != 0,
    };
    if loose {
        bail!(
            "{}: {what} has mode {mode:04o}; refusing it: {} Make it private (chmod 700 {}) after checking its contents, or remove it{}",
            dir.display(),
            if rule == DirRule::Private {
                "it must be 0700 (others may have planted files while it was open)."
            } else {
                "group or others can write to it (and so plant files)."
            },
            dir.display(),
            hint(what)
        );
    }
    Ok(())
}

/// A parent that everyone can write to without the sticky bit (unlike /tmp) lets anyone
/// rename our directory away and put their own in its place.
fn check_parent(parent: &Path, dir: &Path, what: &str) -> Result<()> {
    let md = std::fs::metadata(parent)
        .with_context(|| format!("{}: cannot stat {what}'s parent", parent.display()))?;
    let mode = md.permissions().mode();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        bail!(
            "{}: {what}'s parent {} (mode {:04o}, uid {}) lets others replace it; refusing it{}",
            dir.display(),
            parent.display(),
            mode & 0o7777,
            md.uid(),
            hint(what)
        );
    }
    Ok(())
}

fn hint(what: &str) -> &'static str {
    if what.contains("state") {
        " (or set XDG_RUNTIME_DIR to a private directory of yours)"
    } else {
        ""
    }
}

/// The checks on an open file: regular, owned by the effective uid, not writable by
/// group or others.
pub fn check_file(path: &Path, md: &Metadata, what: &str) -> Result<()> {
    let me = euid();
    if !md.is_file() {
        bail!(
            "{}: {what} is not a regular file; refusing it",
            path.display()
        );
    }
    if md.uid() != me {
        bail!(
            "{}: {what} belongs to uid {}, not to you (uid {me}); refusing it: erofs-host did not write it",
            path.display(),
            md.uid()
        );
    }
    let mode = md.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        bail!(
            "{}: {what} has mode {mode:04o} (writable by group or others); refusing it",
            path.display()
        );
    }
    Ok(())
}

/// Open `path` for reading without following a symlink, and check it. `Ok(None)` when it
/// does not exist.
pub fn open_own_file(path: &Path, what: &str) -> Result<Option<File>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(refusal(path, what, e)),
    };
    let md = file
        .metadata()
        .with_context(|| format!("{}: cannot stat {what}", path.display()))?;
    check_file(path, &md, what)?;
    Ok(Some(file))
}

/// Open (creating it 0600 if missing) `path` for appending, without following a symlink,
/// and check it.
pub fn append_own_file(path: &Path, what: &str) -> Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| refusal(path, what, e))?;
    let md = file
        .metadata()
        .with_context(|| format!("{}: cannot stat {what}", path.display()))?;
    check_file(path, &md, what)?;
    Ok(file)
}

/// Write `bytes` to `path` atomically: a new 0600 file beside it (created exclusively, so
/// nothing planted is reused), then a rename over `path`.
pub fn write_own_file(path: &Path, bytes: &[u8], what: &str) -> Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("a private file needs a file name")?;
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| refusal(&tmp, what, e))?;
    file.write_all(bytes)
        .with_context(|| format!("{}: writing {what}", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: cannot put {what} in place", path.display())
    })
}

fn refusal(path: &Path, what: &str, e: std::io::Error) -> anyhow::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        anyhow::anyhow!(
            "{}: {what} is a symlink; refusing to follow it (erofs-host never makes one there): remove it",
            path.display()
        )
    } else {
        anyhow::Error::new(e).context(format!("{}: {what}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("erofs-private-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_new_directory_is_private_and_a_loose_one_is_refused() {
        let base = tmp("dir");
        let dir = base.join("state");
        ensure_dir(&dir, DirRule::Private, "the state directory").unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure_dir(&dir, DirRule::Private, "the state directory").unwrap_err();
        assert!(format!("{e:#}").contains("mode 0777"), "{e:#}");
        // The cache rule allows reading by others, not writing.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_dir(&dir, DirRule::NotWritableByOthers, "the cache").unwrap();
        std::fs::remove_dir(&dir).unwrap();
        std::os::unix::fs::symlink(&base, &dir).unwrap();
        let e = ensure_dir(&dir, DirRule::Private, "the state directory").unwrap_err();
        assert!(format!("{e:#}").contains("is a symlink"), "{e:#}");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn planted_files_are_refused() {
        let base = tmp("file");
        let target = base.join("target");
        std::fs::write(&target, b"x").unwrap();
        let link = base.join("x.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = append_own_file(&link, "the log").unwrap_err();
        assert!(format!("{e:#}").contains("is a symlink"), "{e:#}");
        let e = open_own_file(&link, "the registration").unwrap_err();
        assert!(format!("{e:#}").contains("is a symlink"), "{e:#}");
        assert!(open_own_file(&base.join("none"), "x").unwrap().is_none());
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = open_own_file(&target, "the registration").unwrap_err();
        assert!(
            format!("{e:#}").contains("writable by group or others"),
            "{e:#}"
        );
        let own = base.join("own.json");
        write_own_file(&own, b"{}", "the registration").unwrap();
        assert!(open_own_file(&own, "the registration").unwrap().is_some());
        let mode = std::fs::metadata(&own).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
