//! A mount made with `erofs-host mount` at a fresh mountpoint, unmounted (and its server
//! stopped) on drop, and the check that FUSE mounts can run here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{is_root, run_host, skip, TempDir};

const T: Duration = Duration::from_secs(120);

/// `erofs-host mount` of one device; `umount` (then `umount --lazy`) when dropped.
pub struct HostMount {
    dir: TempDir,
}

impl HostMount {
    /// Mount the device `args` names (as [`super::device_args`] gives them: the component
    /// first, the blob last, device options between) with `extra` options. The error is
    /// the host's stderr.
    pub fn new(args: &[String], extra: &[&str]) -> Result<HostMount, String> {
        let (component, rest) = args.split_first().ok_or("no component")?;
        let (blob, device) = rest.split_last().ok_or("no blob")?;
        let dir = TempDir::new("mnt");
        let mp = dir.path().join("m");
        std::fs::create_dir(&mp).map_err(|e| format!("{}: {e}", mp.display()))?;
        let mut full = vec!["mount".to_string(), component.clone(), blob.clone()];
        full.push(mp.to_string_lossy().into_owned());
        full.extend(device.iter().cloned());
        full.extend(extra.iter().map(|s| s.to_string()));
        let out = run_host(&full, T);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(HostMount { dir })
    }

    /// The mountpoint.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("m")
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        let mp = self.path().to_string_lossy().into_owned();
        let out = run_host(&["umount", &mp], T);
        if !out.status.success() {
            eprintln!("umount {mp}: {}", String::from_utf8_lossy(&out.stderr));
            let _ = run_host(&["umount", "--lazy", &mp], T);
        }
    }
}

/// Whether FUSE mounts can be made here (root and /dev/fuse); skips `test` loudly if not.
pub fn fuse_available(test: &str) -> bool {
    if !is_root() {
        skip(test, "need root to mount");
        return false;
    }
    if !Path::new("/dev/fuse").exists() {
        skip(test, "no /dev/fuse on this machine");
        return false;
    }
    true
}
