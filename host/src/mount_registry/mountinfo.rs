//! What is mounted where, from `/proc/self/mountinfo`: each mount's id, type, source and
//! superblock options (a FUSE mount's `user_id=` names the user who made it). `umount`
//! compares the topmost mount at a path with the one the server recorded, so that it
//! never unmounts whatever someone stacked on top of ours.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One line of mountinfo, the fields we use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountEntry {
    /// The kernel's id of this mount (unique while it is mounted).
    pub mount_id: u64,
    pub mountpoint: Vec<u8>,
    pub fstype: String,
    pub source: String,
    /// The superblock options (`ro,user_id=1000,group_id=1000,...`).
    #[serde(default)]
    pub super_options: String,
}

impl MountEntry {
    /// The same mount as `other` (id, type and source all equal: an id is reused only
    /// after its mount is gone, and then type and source would have to match too).
    pub fn same_mount(&self, other: &MountEntry) -> bool {
        self.mount_id == other.mount_id
            && self.fstype == other.fstype
            && self.source == other.source
    }

    /// For a FUSE mount: the uid of the user who mounted it (`user_id=`).
    pub fn fuse_owner(&self) -> Option<u32> {
        if !self.fstype.starts_with("fuse") {
            return None;
        }
        self.super_options
            .split(',')
            .find_map(|o| o.strip_prefix("user_id="))
            .and_then(|v| v.parse().ok())
    }

    /// A FUSE mount served by erofs-host itself (`--backend fuse`, a loop backing): type
    /// `fuse` (root's mount(2) keeps the subtype to itself) or `fuse.erofs-wasm` (through
    /// fusermount3), source `erofs-wasm:NAME`.
    pub fn is_erofs_host_fuse(&self) -> bool {
        (self.fstype == "fuse" || self.fstype == "fuse.erofs-wasm")
            && self.source.starts_with("erofs-wasm:")
    }
}

/// Parse one mountinfo line:
/// `id parent major:minor root MOUNTPOINT options [optional...] - FSTYPE SOURCE SUPER`.
fn parse_line(line: &str) -> Option<MountEntry> {
    let fields: Vec<&str> = line.split(' ').collect();
    let mount_id = fields.first()?.parse().ok()?;
    let mountpoint = unescape(fields.get(4)?);
    let dash = fields.iter().position(|f| *f == "-")?;
    let text = |i: usize| {
        fields
            .get(i)
            .map(|s| String::from_utf8_lossy(&unescape(s)).into_owned())
    };
    Some(MountEntry {
        mount_id,
        mountpoint,
        fstype: text(dash + 1)?,
        source: text(dash + 2).unwrap_or_default(),
        super_options: text(dash + 3).unwrap_or_default(),
    })
}

/// Every mount at exactly `path`, in mount order (the last one is the visible one).
pub fn stack_at(path: &Path) -> Vec<MountEntry> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    stack_in(&info, path.as_os_str().as_bytes())
}

fn stack_in(info: &str, want: &[u8]) -> Vec<MountEntry> {
    info.lines()
        .filter_map(parse_line)
        .filter(|e| e.mountpoint == want)
        .collect()
}

/// The visible mount at exactly `path`, if any.
pub fn topmost(path: &Path) -> Option<MountEntry> {
    stack_at(path).pop()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` (three octal digits).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let octal = b.get(i + 1..i + 4).and_then(|d| {
                std::str::from_utf8(d)
                    .ok()
                    .and_then(|t| u8::from_str_radix(t, 8).ok())
            });
            if let Some(v) = octal {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
29 1 0:26 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
80 29 0:50 / /tmp/a\\040b rw,nosuid,nodev,relatime shared:40 - fuse.erofs-wasm erofs-wasm:layer.tar.gz ro,user_id=65534,group_id=65534,default_permissions
81 80 0:51 / /tmp/a\\040b rw,relatime shared:41 - tmpfs tmpfs rw
";

    #[test]
    fn stack_and_topmost() {
        let stack = stack_in(INFO, b"/tmp/a b");
        assert_eq!(stack.len(), 2);
        assert!(stack[0].is_erofs_host_fuse());
        assert_eq!(stack[0].fuse_owner(), Some(65534));
        assert_eq!(stack[1].fstype, "tmpfs");
        assert_eq!(stack[1].fuse_owner(), None);
        assert!(!stack[1].same_mount(&stack[0]));
        assert!(stack[0].same_mount(&stack[0].clone()));
    }

    #[test]
    fn damaged_lines_are_skipped() {
        assert!(parse_line("").is_none());
        assert!(parse_line("x 1 0:1 / /a rw - ext4").is_none());
        assert!(parse_line("1 1 0:1 / /a rw").is_none());
        assert_eq!(unescape("a\\04"), b"a\\04");
        assert_eq!(unescape("a\\134b"), b"a\\b");
    }
}
