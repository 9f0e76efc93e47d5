//! [`Filesystem::for_each_regular_file`]: every distinct regular-file inode of the tree, once,
//! with one path that reaches it and where its data starts. For callers that check the data
//! against something outside the image (the tar index checks each file's tar header).

use std::collections::HashSet;

use crate::data::Extent;
use crate::{Error, FileType, Filesystem, ReadAt};

/// Directory entries requested per `readdir` call during the walk.
const BATCH: usize = 256;

/// One regular file met by [`Filesystem::for_each_regular_file`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegularFile {
    pub nid: u64,
    /// The first path the walk reached it by, without a leading `/` (hard links have more).
    pub path: Vec<u8>,
    pub size: u64,
    pub nlink: u32,
    /// Device byte offset of the first data byte; `None` for an empty file or a leading hole.
    pub data_start: Option<u64>,
}

/// How a walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkEnd {
    /// Directory entries visited ("." and ".." excluded).
    pub entries: u64,
    /// The walk stopped at `max_entries` before the end of the tree.
    pub truncated: bool,
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

impl Filesystem {
    /// Call `visit` for every regular-file inode reachable from the root (a hard-linked inode
    /// once, under the first name met), depth first, visiting at most `max_entries` directory
    /// entries. `visit` gets the device back so that it may read through it. With
    /// `skip_defects`, a directory or file the walk cannot read is left out instead of
    /// ending the walk (for a sample, where a defect is another operation's to report).
    pub fn for_each_regular_file(
        &self,
        dev: &mut dyn ReadAt,
        max_entries: u64,
        skip_defects: bool,
        visit: &mut dyn FnMut(&mut dyn ReadAt, RegularFile) -> Result<(), Error>,
    ) -> Result<WalkEnd, Error> {
        let root = self.root_nid();
        let mut dirs_seen: HashSet<u64> = HashSet::from([root]);
        // Only inodes with more than one name can come up again.
        let mut linked_seen: HashSet<u64> = HashSet::new();
        let mut stack: Vec<(u64, Vec<u8>)> = vec![(root, Vec::new())];
        let mut entries = 0u64;
        while let Some((dir, path)) = stack.pop() {
            let mut cookie = 0u64;
            loop {
                let batch = match self.readdir(dev, dir, cookie, BATCH) {
                    Ok(batch) => batch,
                    Err(_) if skip_defects => break,
                    Err(e) => return Err(e),
                };
                let Some(last) = batch.last() else { break };
                if last.next_cookie <= cookie {
                    return Err(Error::Corrupt(format!(
                        "dir nid {dir}: readdir cookie does not advance"
                    )));
                }
                cookie = last.next_cookie;
                for e in batch {
                    if e.name == b"." || e.name == b".." {
                        continue;
                    }
                    entries = entries.saturating_add(1);
                    if entries > max_entries {
                        return Ok(WalkEnd {
                            entries: max_entries,
                            truncated: true,
                        });
                    }
                    match e.file_type {
                        FileType::Directory if dirs_seen.insert(e.nid) => {
                            stack.push((e.nid, join(&path, &e.name)));
                        }
                        FileType::Directory => {}
                        FileType::Regular | FileType::Unknown => {
                            let attr = match self.getattr(dev, e.nid) {
                                Ok(attr) => attr,
                                Err(_) if skip_defects => continue,
                                Err(e) => return Err(e),
                            };
                            if attr.file_type() != FileType::Regular
                                || (attr.nlink > 1 && !linked_seen.insert(e.nid))
                            {
                                continue;
                            }
                            let data_start = match self.data_start(dev, e.nid, attr.size) {
                                Ok(start) => start,
                                Err(_) if skip_defects => continue,
                                Err(e) => return Err(e),
                            };
                            visit(
                                dev,
                                RegularFile {
                                    nid: e.nid,
                                    path: join(&path, &e.name),
                                    size: attr.size,
                                    nlink: attr.nlink,
                                    data_start,
                                },
                            )?;
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(WalkEnd {
            entries,
            truncated: false,
        })
    }

    /// Device offset of the first data byte of regular file `nid` of `size` bytes.
    fn data_start(&self, dev: &mut dyn ReadAt, nid: u64, size: u64) -> Result<Option<u64>, Error> {
        if size == 0 {
            return Ok(None);
        }
        let first: Option<Extent> = self.physical_extents(dev, nid, 0, 1)?.into_iter().next();
        Ok(first.and_then(|x| x.physical))
    }
}

#[cfg(test)]
mod tests {
    use super::join;

    #[test]
    fn paths_have_no_leading_slash() {
        assert_eq!(join(b"", b"etc"), b"etc");
        assert_eq!(join(b"etc", b"passwd"), b"etc/passwd");
    }
}
