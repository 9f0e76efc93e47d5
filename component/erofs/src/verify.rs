//! [`Filesystem::verify`]: a bounded, iterative walk of the whole tree that reports the first defect.

use std::collections::{HashMap, HashSet};

use crate::data::MAX_EXTENTS;
use crate::dir::MAX_NAME;
use crate::{Error, FileType, Filesystem, ReadAt};

/// Bounds for [`Filesystem::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyLimits {
    /// Deepest directory nesting accepted below the root.
    pub max_depth: usize,
    /// Most directory entries (excluding `.` and `..`) visited in total.
    pub max_entries: u64,
    /// Also list and read every xattr.
    pub check_xattrs: bool,
    /// Also map every chunk of every regular file (checks all data addresses).
    pub check_data_map: bool,
}

impl Default for VerifyLimits {
    fn default() -> Self {
        VerifyLimits {
            max_depth: 1024,
            max_entries: 1 << 22,
            check_xattrs: true,
            check_data_map: true,
        }
    }
}

/// What [`Filesystem::verify`] saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Directories, including the root.
    pub directories: u64,
    /// Distinct regular-file inodes.
    pub regular_files: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Character and block devices.
    pub devices: u64,
    /// FIFOs and sockets.
    pub fifos_and_sockets: u64,
    /// Directory entries other than `.` and `..`.
    pub entries: u64,
    /// Extra names of non-directory inodes (hard links).
    pub hard_links: u64,
    /// Sum of the sizes of distinct regular files.
    pub data_bytes: u64,
    /// Number of xattrs seen (over all entries).
    pub xattrs: u64,
    /// Deepest directory level seen (root = 0).
    pub max_depth: usize,
    /// Non-directory inodes whose `nlink` differs from the number of names found (informational; the
    /// kernel does not check this either).
    pub nlink_mismatches: u64,
}

/// Directory entries requested per `readdir` call during the walk.
const BATCH: usize = 256;

/// Prefix an error with the path it concerns; anything that is not I/O or unsupported becomes a
/// corruption report.
fn at(path: &[u8], e: Error) -> Error {
    let p = String::from_utf8_lossy(path);
    match e {
        Error::Io(m) => Error::Io(format!("{p}: {m}")),
        Error::Unsupported(m) => Error::Unsupported(format!("{p}: {m}")),
        Error::Corrupt(m) => Error::Corrupt(format!("{p}: {m}")),
        other => Error::Corrupt(format!("{p}: {other}")),
    }
}

fn defect(path: &[u8], msg: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("{}: {msg}", String::from_utf8_lossy(path)))
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if p.last() != Some(&b'/') {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

struct Pending {
    nid: u64,
    parent: u64,
    path: Vec<u8>,
    depth: usize,
}

/// The walk's state: what was seen so far and the directories still to visit.
struct Walk {
    limits: VerifyLimits,
    report: VerifyReport,
    /// Directories already reached (a second arrival is a cycle or a hard-linked directory).
    visited_dirs: HashSet<u64>,
    /// Non-directory nid -> (nlink, names seen).
    links: HashMap<u64, (u32, u32)>,
    stack: Vec<Pending>,
}

/// What one directory's listing held besides its ordinary entries.
#[derive(Default)]
struct DirCounts {
    dots: u32,
    dotdots: u32,
}

impl Filesystem {
    /// Walk the whole tree from the root and check it: every inode reachable and in bounds, dirents
    /// sorted with valid names, `.` and `..` correct, no directory reached twice (cycles), symlinks
    /// readable, data addresses inside their devices, xattrs readable. Returns the first defect, with
    /// its path, as the error.
    pub fn verify(
        &self,
        dev: &mut dyn ReadAt,
        limits: VerifyLimits,
    ) -> Result<VerifyReport, Error> {
        // Step 1: the root must be a directory; it is the first directory to visit.
        let root = self.root_nid();
        let root_attr = self.getattr(dev, root).map_err(|e| at(b"/", e))?;
        if root_attr.file_type() != FileType::Directory {
            return Err(defect(b"/", "root is not a directory"));
        }
        let mut walk = Walk {
            limits,
            report: VerifyReport {
                directories: 1,
                ..VerifyReport::default()
            },
            visited_dirs: HashSet::from([root]),
            links: HashMap::new(),
            stack: vec![Pending {
                nid: root,
                parent: root,
                path: b"/".to_vec(),
                depth: 0,
            }],
        };
        if limits.check_xattrs {
            walk.report.xattrs = self.check_xattrs(dev, root, b"/")?;
        }
        // Step 2: visit directories depth-first until none is left; each visit may push more.
        while let Some(dir) = walk.stack.pop() {
            self.verify_dir(dev, &mut walk, dir)?;
        }
        // Step 3: every name has been seen; compare the names found with each inode's nlink.
        let mismatches = walk
            .links
            .values()
            .filter(|(nlink, seen)| nlink != seen)
            .count();
        walk.report.nlink_mismatches = u64::try_from(mismatches).unwrap_or(u64::MAX);
        Ok(walk.report)
    }

    /// Read directory `dir` in batches: check the order and names of its entries, `.` and `..`,
    /// and each other entry's inode.
    fn verify_dir(&self, dev: &mut dyn ReadAt, walk: &mut Walk, dir: Pending) -> Result<(), Error> {
        walk.report.max_depth = walk.report.max_depth.max(dir.depth);
        let ino = self
            .load_inode(dev, dir.nid)
            .map_err(|e| at(&dir.path, e))?;
        let mut counts = DirCounts::default();
        let mut prev: Option<Vec<u8>> = None;
        let mut cookie = 0u64;
        loop {
            // Next batch; an empty one ends the listing, a cookie that does not grow is a loop.
            let batch = self
                .readdir(dev, dir.nid, cookie, BATCH)
                .map_err(|e| at(&dir.path, e))?;
            let Some(last) = batch.last() else { break };
            if last.next_cookie <= cookie {
                return Err(defect(&dir.path, "readdir cookie does not advance"));
            }
            cookie = last.next_cookie;
            for e in batch {
                let path = join(&dir.path, &e.name);
                check_name(&path, &e.name)?;
                // Names must be strictly ascending; a `.` the image omits is synthesized first.
                let synthetic_dot = ino.dot_omitted && e.name == b"." && prev.is_none();
                if !synthetic_dot {
                    if let Some(p) = &prev {
                        if p.as_slice() >= e.name.as_slice() {
                            return Err(defect(&path, "directory entries out of order"));
                        }
                    }
                    prev = Some(e.name.clone());
                }
                if e.name == b"." {
                    counts.dots = counts.dots.saturating_add(1);
                    if e.nid != dir.nid {
                        return Err(defect(&path, format!("'.' points at nid {}", e.nid)));
                    }
                } else if e.name == b".." {
                    counts.dotdots = counts.dotdots.saturating_add(1);
                    if e.nid != dir.parent {
                        return Err(defect(
                            &path,
                            format!("'..' points at nid {}, parent is {}", e.nid, dir.parent),
                        ));
                    }
                } else {
                    self.verify_entry(dev, walk, &dir, e.nid, e.file_type, path)?;
                }
            }
        }
        // The listing is complete: exactly one `.` (unless omitted) and one `..`.
        if !ino.dot_omitted && counts.dots != 1 {
            return Err(defect(&dir.path, format!("{} '.' entries", counts.dots)));
        }
        if counts.dotdots != 1 {
            return Err(defect(
                &dir.path,
                format!("{} '..' entries", counts.dotdots),
            ));
        }
        Ok(())
    }

    /// Check entry `nid` (named `path`, typed `dirent_type` in its dirent) of directory `dir`:
    /// a subdirectory is queued, a non-directory is counted and its content checked once, however
    /// many names it has.
    fn verify_entry(
        &self,
        dev: &mut dyn ReadAt,
        walk: &mut Walk,
        dir: &Pending,
        nid: u64,
        dirent_type: FileType,
        path: Vec<u8>,
    ) -> Result<(), Error> {
        let limits = walk.limits;
        let report = &mut walk.report;
        report.entries = report.entries.saturating_add(1);
        if report.entries > limits.max_entries {
            return Err(Error::Range(format!(
                "more than {} entries (limit)",
                limits.max_entries
            )));
        }
        // The dirent's type must match the inode's.
        let attr = self.getattr(dev, nid).map_err(|err| at(&path, err))?;
        let ft = attr.file_type();
        if dirent_type != FileType::Unknown && dirent_type != ft {
            return Err(defect(
                &path,
                format!("dirent type {dirent_type:?} but inode is {ft:?}"),
            ));
        }
        if limits.check_xattrs {
            let n = self.check_xattrs(dev, nid, &path)?;
            report.xattrs = report.xattrs.saturating_add(n);
        }
        // A directory: reached once only, not too deep; visit it later.
        if ft == FileType::Directory {
            if !walk.visited_dirs.insert(nid) {
                return Err(defect(
                    &path,
                    format!("directory nid {nid} reached twice (cycle or hard-linked directory)"),
                ));
            }
            let depth = dir.depth.saturating_add(1);
            if depth > limits.max_depth {
                return Err(defect(&path, format!("deeper than {}", limits.max_depth)));
            }
            report.directories = report.directories.saturating_add(1);
            walk.stack.push(Pending {
                nid,
                parent: dir.nid,
                path,
                depth,
            });
            return Ok(());
        }
        // A non-directory: a second name is a hard link, already checked.
        let slot = walk.links.entry(nid).or_insert((attr.nlink, 0));
        slot.1 = slot.1.saturating_add(1);
        if slot.1 > 1 {
            report.hard_links = report.hard_links.saturating_add(1);
            return Ok(());
        }
        // First name of a non-directory: count it and check what it holds.
        match ft {
            FileType::Regular => {
                report.regular_files = report.regular_files.saturating_add(1);
                report.data_bytes = report.data_bytes.saturating_add(attr.size);
                if limits.check_data_map {
                    self.check_data_map(dev, nid, &path)?;
                }
            }
            FileType::Symlink => {
                report.symlinks = report.symlinks.saturating_add(1);
                let t = self.readlink(dev, nid).map_err(|err| at(&path, err))?;
                if t.is_empty() {
                    return Err(defect(&path, "empty symlink target"));
                }
            }
            FileType::CharDevice | FileType::BlockDevice => {
                report.devices = report.devices.saturating_add(1);
            }
            _ => report.fifos_and_sockets = report.fifos_and_sockets.saturating_add(1),
        }
        Ok(())
    }

    /// List and read every xattr of `nid`; returns how many there are.
    fn check_xattrs(&self, dev: &mut dyn ReadAt, nid: u64, path: &[u8]) -> Result<u64, Error> {
        let names = self.listxattr(dev, nid).map_err(|e| at(path, e))?;
        for n in &names {
            self.getxattr(dev, nid, n).map_err(|e| at(path, e))?;
        }
        Ok(u64::try_from(names.len()).unwrap_or(u64::MAX))
    }

    /// Map every chunk of regular file `nid`, checking that each address lies inside its device.
    fn check_data_map(&self, dev: &mut dyn ReadAt, nid: u64, path: &[u8]) -> Result<(), Error> {
        let ino = self.load_inode(dev, nid).map_err(|e| at(path, e))?;
        let size = ino.size();
        let mut pos = 0u64;
        // Every extent covers at least one byte, so this terminates; MAX_EXTENTS per call bounds memory.
        while pos < size {
            let exts = self
                .extents_of(dev, &ino, pos, size.saturating_sub(pos), MAX_EXTENTS)
                .map_err(|e| at(path, e))?;
            let next = exts
                .last()
                .map(|x| x.file_offset.saturating_add(x.len))
                .unwrap_or(pos);
            if next <= pos {
                return Err(defect(path, "data map does not advance"));
            }
            pos = next;
        }
        Ok(())
    }
}

fn check_name(path: &[u8], name: &[u8]) -> Result<(), Error> {
    if name.is_empty() {
        return Err(defect(path, "empty name"));
    }
    if name.len() > MAX_NAME {
        return Err(defect(path, format!("name of {} bytes", name.len())));
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(defect(path, "name contains '/' or NUL"));
    }
    Ok(())
}
