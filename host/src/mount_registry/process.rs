//! Which process a registration's pid is: `umount` signals a server only if it can prove
//! the pid is still the server that wrote the registration.
//!
//! The proof, recorded by the server itself when it registers and compared by `umount`:
//! - the boot (`/proc/sys/kernel/random/boot_id`): pids and start times restart at boot;
//! - the pid's start time (field 22 of `/proc/PID/stat`, clock ticks since boot): a pid
//!   reused by another process has a later start time, so pid + start time + boot name one
//!   process for ever;
//! - the program (device and inode of `/proc/PID/exe`, which stay right even if the
//!   binary is replaced on disk) and the owner of `/proc/PID` (the effective uid).
//!
//! The registration itself is trusted only because it sits in the caller's own private
//! state directory and is owned by the caller (see `private`).

use std::os::unix::fs::MetadataExt;

use serde::{Deserialize, Serialize};

/// What identifies a running process for ever (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: u32,
    pub boot_id: String,
    pub start_time: u64,
    pub exe_dev: u64,
    pub exe_ino: u64,
    pub uid: u32,
}

impl ProcessIdentity {
    /// This process, as `umount` will find it.
    pub fn of_self() -> std::io::Result<ProcessIdentity> {
        ProcessIdentity::of(std::process::id())
    }

    /// The process that has `pid` now; an error when there is none (or it cannot be
    /// inspected: another user's process, for a non-root caller).
    pub fn of(pid: u32) -> std::io::Result<ProcessIdentity> {
        let proc_dir = format!("/proc/{pid}");
        let stat = std::fs::read_to_string(format!("{proc_dir}/stat"))?;
        let start_time = start_time_of(&stat).ok_or_else(|| {
            std::io::Error::other(format!("{proc_dir}/stat: no start time in {stat:?}"))
        })?;
        let exe = std::fs::metadata(format!("{proc_dir}/exe"))?;
        let owner = std::fs::metadata(&proc_dir)?;
        Ok(ProcessIdentity {
            pid,
            boot_id: boot_id()?,
            start_time,
            exe_dev: exe.dev(),
            exe_ino: exe.ino(),
            uid: owner.uid(),
        })
    }

    /// Ok when `pid` is still this process; otherwise why not, in words.
    pub fn check_still_running(&self) -> Result<(), String> {
        let now = ProcessIdentity::of(self.pid)
            .map_err(|e| format!("pid {} cannot be inspected or is gone ({e})", self.pid))?;
        if now.boot_id != self.boot_id {
            return Err(format!(
                "the registration is from an earlier boot ({})",
                self.boot_id
            ));
        }
        if now.start_time != self.start_time {
            return Err(format!(
                "pid {} started at tick {}, not at tick {} as the server did: the pid was reused by another process",
                self.pid, now.start_time, self.start_time
            ));
        }
        if (now.exe_dev, now.exe_ino) != (self.exe_dev, self.exe_ino) || now.uid != self.uid {
            return Err(format!(
                "pid {} runs another program or as another user (uid {}) than the server did",
                self.pid, now.uid
            ));
        }
        Ok(())
    }
}

fn boot_id() -> std::io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string())
}

/// Field 22 of `/proc/PID/stat`. The command name (field 2) is in parentheses and may
/// hold spaces and parentheses itself, so fields are counted after the last `)`.
fn start_time_of(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // After ")": field 3 (state) is the first; field 22 is the 20th.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// True while `pid` exists (a zombie counts: it has not been reaped).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// True when `pid` is a zombie (exited, not yet reaped), or gone.
pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_after_a_tricky_name() {
        let stat =
            "123 (a) b) (c) S 1 123 123 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(start_time_of(stat), Some(98765));
        assert_eq!(start_time_of("123 (x"), None);
        assert_eq!(start_time_of("123 (x) S 1"), None);
    }

    #[test]
    fn this_process_proves_itself_and_a_changed_record_does_not() {
        let me = ProcessIdentity::of_self().unwrap();
        assert_eq!(me.check_still_running(), Ok(()));
        let mut reused = me.clone();
        reused.start_time += 1;
        assert!(reused.check_still_running().unwrap_err().contains("reused"));
        let mut other = me.clone();
        other.exe_ino += 1;
        assert!(other
            .check_still_running()
            .unwrap_err()
            .contains("another program"));
    }
}
