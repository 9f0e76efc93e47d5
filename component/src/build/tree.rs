//! The file tree a tar describes, as `tar -x` would leave it, kept as metadata only.
//!
//! Paths (documented treatment, applied to member names and hard-link targets):
//! - `/` separators; empty and `.` components are dropped, so `./a//b/` is `a/b` and a
//!   leading `/` is removed (absolute names become relative to the root, as `tar -x` does).
//! - A `..` component is refused: a layer must not name anything outside its root, and no
//!   real tar writer produces `a/../b`.
//! - A NUL byte is refused; a component over 255 bytes (the EROFS dirent limit) is refused.
//! - Symlink targets are data: kept verbatim (absolute or relative), 1..=4095 bytes, no NUL.
//!
//! Semantics:
//! - A later member for the same path replaces the earlier one, except directory over
//!   directory, which updates the metadata and keeps the children. A non-directory over a
//!   directory drops the directory's subtree.
//! - Missing parents are created with mode 0755, uid/gid 0 and the newest mtime in the
//!   archive (deterministic; container runtimes create them 0755). A parent that exists
//!   as a non-directory is an error.
//! - The root can only be a directory: a non-directory member naming it is an error.
//! - Hard links share the target's inode. A link whose target is not (yet) in the tree is
//!   retried after the whole archive, so order does not matter; a target that never
//!   appears, a chain that never reaches a file (a loop), or a directory is an error.
//! - With `aufs`: `.wh.NAME` becomes an overlay whiteout (char device 0:0, mode 0) named
//!   NAME, and its directory gets `trusted.overlay.origin=""` as mkfs.erofs does;
//!   `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory; other `.wh..wh.*`
//!   (aufs internals) are dropped, and so is anything below a `.wh.*` directory (such as
//!   aufs' `.wh..wh.plnk/` hard-link store); a bare `.wh.`, `.wh..` or `.wh...` is refused.

use std::collections::BTreeMap;

use super::erofs_writer::MAX_SYMLINK;
use super::tar::{Entry, Kind};
use super::xattr::check_xattr;
use crate::error::{Error, Result};

/// Longest name component EROFS directories hold.
pub const MAX_NAME: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// `size` bytes at tar offset `data_offset`.
    Regular {
        size: u64,
        data_offset: u64,
    },
    Directory {
        children: BTreeMap<Vec<u8>, usize>,
    },
    Symlink {
        target: Vec<u8>,
    },
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    /// Permission bits (0o7777); the file type comes from `kind`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Filled in by [`TreeBuilder::finish`]: directory entries naming this node (files),
    /// or 2 + subdirectories (directories).
    pub nlink: u32,
    /// Index of the member that last set this node (for "later wins"), and its offset.
    seq: u64,
    pub offset: u64,
    implied: bool,
    opaque: bool,
    has_whiteout: bool,
}

/// The finished tree: `nodes[ROOT]` is the root directory. Nodes that a later member
/// replaced are left in the arena but are not reachable from the root.
#[derive(Debug)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

pub const ROOT: usize = 0;

#[derive(Debug, Clone, Copy, Default)]
pub struct TreeOptions {
    /// Translate aufs whiteouts into overlayfs ones.
    pub aufs: bool,
}

struct DeferredLink {
    seq: u64,
    offset: u64,
    path: Vec<Vec<u8>>,
    target: Vec<Vec<u8>>,
    shown: String,
}

pub struct TreeBuilder {
    options: TreeOptions,
    nodes: Vec<Node>,
    deferred: Vec<DeferredLink>,
    seq: u64,
    newest_mtime: Option<i64>,
    /// aufs internals dropped, for the caller's report.
    pub dropped: u64,
    /// Members whose name began with `/` (made relative), for the caller's report.
    pub absolute_names: u64,
}

/// Most nodes a tree may hold: 4,194,304, the entry limit of our reader's `verify`, and
/// about 1 GiB of metadata at worst. Real layers hold well under a million files; the
/// limit stops a tar of nothing but headers from growing the tree without bound.
pub const MAX_NODES: usize = 1 << 22;

/// A name for messages: lossy UTF-8, control characters (NUL included) shown as U+FFFD so
/// that an error message never carries raw control bytes to a terminal.
pub fn shown(path: &[u8]) -> String {
    String::from_utf8_lossy(path)
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

fn entry_error(entry: &Entry, why: impl std::fmt::Display) -> Error {
    Error::bad(format!(
        "tar entry {:?} at offset {}: {why}",
        shown(&entry.path),
        entry.offset
    ))
}

/// Split and clean a path per the module's rules. `what` names the field in errors.
pub fn normalise(path: &[u8], what: &str) -> std::result::Result<Vec<Vec<u8>>, String> {
    if path.contains(&0) {
        return Err(format!("the {what} contains a NUL byte"));
    }
    let mut out = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(format!(
                    "the {what} contains `..` (refused: it could escape the root)"
                ))
            }
            _ if part.len() > MAX_NAME => {
                return Err(format!(
                    "the {what} has a {}-byte component; EROFS names are at most {MAX_NAME} bytes",
                    part.len()
                ))
            }
            _ => out.push(part.to_vec()),
        }
    }
    Ok(out)
}

impl Node {
    /// A directory no entry named (the root, or a parent a path implies): 0755, owned by
    /// root, mtime 0, until an entry of its own sets them.
    fn implied_dir() -> Self {
        Node {
            kind: NodeKind::Directory {
                children: BTreeMap::new(),
            },
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: BTreeMap::new(),
            nlink: 0,
            seq: 0,
            offset: 0,
            implied: true,
            opaque: false,
            has_whiteout: false,
        }
    }
}

impl TreeBuilder {
    pub fn new(options: TreeOptions) -> Self {
        let root = Node::implied_dir();
        Self {
            options,
            nodes: vec![root],
            deferred: Vec::new(),
            seq: 0,
            newest_mtime: None,
            dropped: 0,
            absolute_names: 0,
        }
    }

    /// Add one tar member.
    pub fn add(&mut self, entry: Entry) -> Result<()> {
        self.seq += 1;
        if self.nodes.len() >= MAX_NODES {
            return Err(entry_error(
                &entry,
                format!("the archive has more than {MAX_NODES} entries, the most an index holds"),
            ));
        }
        if entry.path.starts_with(b"/") {
            self.absolute_names += 1;
        }
        let mut path = normalise(&entry.path, "name").map_err(|e| entry_error(&entry, e))?;
        self.newest_mtime = Some(
            self.newest_mtime
                .map_or(entry.mtime, |m| m.max(entry.mtime)),
        );

        let mut whiteout = false;
        if self.options.aufs {
            let parents = path.split_last().map_or(&[][..], |(_, p)| p);
            if parents.iter().any(|p| p.starts_with(b".wh.")) {
                // Inside aufs bookkeeping (`.wh..wh.plnk/...`) or under a whiteout name.
                self.dropped += 1;
                return Ok(());
            }
            if let Some(last) = path.last() {
                if let Some(rest) = last.strip_prefix(b".wh.") {
                    if rest == b".wh..opq" {
                        path.pop();
                        let dir = self.parent_dir(&path, &entry)?;
                        self.nodes[dir].opaque = true;
                        return Ok(());
                    }
                    if rest.starts_with(b".wh.") {
                        // aufs bookkeeping (.wh..wh.aufs, .wh..wh.plnk, ...): not files.
                        self.dropped += 1;
                        return Ok(());
                    }
                    if rest.is_empty() || rest == b"." || rest == b".." {
                        return Err(entry_error(
                            &entry,
                            "a whiteout must name an entry (`.wh.` + name); this one names nothing",
                        ));
                    }
                    let name = rest.to_vec();
                    if let Some(l) = path.last_mut() {
                        *l = name;
                    }
                    whiteout = true;
                }
            }
        }

        for (name, value) in &entry.xattrs {
            check_xattr(name, value).map_err(|e| entry_error(&entry, e))?;
        }
        let xattrs: BTreeMap<Vec<u8>, Vec<u8>> = entry.xattrs.iter().cloned().collect();

        let kind = if whiteout {
            NodeKind::CharDevice { major: 0, minor: 0 }
        } else {
            match entry.kind {
                Kind::Regular => NodeKind::Regular {
                    size: entry.size,
                    data_offset: entry.data_offset,
                },
                Kind::Directory => NodeKind::Directory {
                    children: BTreeMap::new(),
                },
                Kind::Symlink => {
                    if entry.link.is_empty()
                        || entry.link.len() > MAX_SYMLINK
                        || entry.link.contains(&0)
                    {
                        return Err(entry_error(
                            &entry,
                            format!(
                                "symlink target of {} bytes: it must be 1..={MAX_SYMLINK} bytes without NUL",
                                entry.link.len()
                            ),
                        ));
                    }
                    NodeKind::Symlink {
                        target: entry.link.clone(),
                    }
                }
                Kind::CharDevice => NodeKind::CharDevice {
                    major: entry.dev_major,
                    minor: entry.dev_minor,
                },
                Kind::BlockDevice => NodeKind::BlockDevice {
                    major: entry.dev_major,
                    minor: entry.dev_minor,
                },
                Kind::Fifo => NodeKind::Fifo,
                Kind::HardLink => return self.hard_link(path, &entry),
            }
        };
        let node = Node {
            kind,
            mode: if whiteout { 0 } else { entry.mode },
            uid: entry.uid,
            gid: entry.gid,
            mtime: entry.mtime,
            mtime_nsec: entry.mtime_nsec,
            xattrs: if whiteout { BTreeMap::new() } else { xattrs },
            nlink: 0,
            seq: self.seq,
            offset: entry.offset,
            implied: false,
            opaque: false,
            has_whiteout: false,
        };

        let Some(name) = path.pop() else {
            // The member names the root itself.
            if !matches!(node.kind, NodeKind::Directory { .. }) || whiteout {
                return Err(entry_error(&entry, "the root can only be a directory"));
            }
            self.update_dir(ROOT, node);
            return Ok(());
        };
        let parent = self.parent_dir(&path, &entry)?;
        if whiteout {
            self.nodes[parent].has_whiteout = true;
        }
        let existing = self.child(parent, &name);
        match existing {
            Some(old) if self.is_dir(old) && matches!(node.kind, NodeKind::Directory { .. }) => {
                self.update_dir(old, node);
            }
            _ => {
                let index = self.push(node);
                self.set_child(parent, name, index);
            }
        }
        Ok(())
    }

    fn hard_link(&mut self, path: Vec<Vec<u8>>, entry: &Entry) -> Result<()> {
        let target =
            normalise(&entry.link, "hard-link target").map_err(|e| entry_error(entry, e))?;
        if path.is_empty() {
            return Err(entry_error(entry, "a hard link cannot replace the root"));
        }
        let link = DeferredLink {
            seq: self.seq,
            offset: entry.offset,
            path,
            target,
            shown: shown(&entry.path),
        };
        if !self.place_link(&link)? {
            // The target is not there yet: retry when the archive has been read.
            self.deferred.push(link);
        }
        Ok(())
    }

    /// Link `link.path` to the node at `link.target`, if it exists. Returns false if not.
    fn place_link(&mut self, link: &DeferredLink) -> Result<bool> {
        let err = |why: String| {
            Error::bad(format!(
                "tar entry {:?} at offset {}: {why}",
                link.shown, link.offset
            ))
        };
        let Some(target) = self.lookup(&link.target) else {
            return Ok(false);
        };
        if self.is_dir(target) {
            return Err(err("a hard link to a directory is not allowed".into()));
        }
        let (name, parents) = match link.path.split_last() {
            Some(split) => split,
            None => return Err(err("a hard link cannot replace the root".into())),
        };
        let parent = self.parent_dir_of(parents).map_err(err)?;
        if let Some(old) = self.child(parent, name) {
            if old == target {
                return Ok(true);
            }
            if self.nodes[old].seq > link.seq {
                // A later member took the name: it wins.
                return Ok(true);
            }
        }
        self.set_child(parent, name.clone(), target);
        Ok(true)
    }

    /// Resolve deferred links, compute link counts and overlay xattrs.
    pub fn finish(mut self) -> Result<Tree> {
        let mut deferred = std::mem::take(&mut self.deferred);
        // Each pass places at least one link or stops: at most `deferred.len()` passes.
        loop {
            let before = deferred.len();
            let mut left = Vec::new();
            for link in deferred {
                if !self.place_link(&link)? {
                    left.push(link);
                }
            }
            deferred = left;
            if deferred.is_empty() || deferred.len() == before {
                break;
            }
        }
        if let Some(link) = deferred.first() {
            let target: Vec<u8> = link.target.join(&b'/');
            return Err(Error::bad(format!(
                "tar entry {:?} at offset {}: hard link to {:?}, which is not in the archive (or the links form a loop)",
                link.shown,
                link.offset,
                shown(&target)
            )));
        }

        let newest = self.newest_mtime.unwrap_or(0);
        // Walk from the root: count links, and add the overlay attributes.
        for node in &mut self.nodes {
            node.nlink = 0;
        }
        let mut stack = vec![ROOT];
        let mut seen_dirs = vec![false; self.nodes.len()];
        while let Some(dir) = stack.pop() {
            if std::mem::replace(&mut seen_dirs[dir], true) {
                continue;
            }
            let children: Vec<usize> = match &self.nodes[dir].kind {
                NodeKind::Directory { children } => children.values().copied().collect(),
                _ => Vec::new(),
            };
            let mut subdirs = 0u32;
            for child in children {
                if self.is_dir(child) {
                    subdirs = subdirs.saturating_add(1);
                    stack.push(child);
                } else {
                    self.nodes[child].nlink = self.nodes[child].nlink.saturating_add(1);
                }
            }
            let node = &mut self.nodes[dir];
            node.nlink = subdirs.saturating_add(2);
            if node.implied {
                node.mtime = newest;
                node.mtime_nsec = 0;
            }
            if node.opaque {
                node.xattrs
                    .insert(b"trusted.overlay.opaque".to_vec(), b"y".to_vec());
            }
            if node.has_whiteout {
                node.xattrs
                    .entry(b"trusted.overlay.origin".to_vec())
                    .or_default();
            }
        }
        Ok(Tree { nodes: self.nodes })
    }

    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn is_dir(&self, index: usize) -> bool {
        matches!(self.nodes[index].kind, NodeKind::Directory { .. })
    }

    fn child(&self, dir: usize, name: &[u8]) -> Option<usize> {
        match &self.nodes[dir].kind {
            NodeKind::Directory { children } => children.get(name).copied(),
            _ => None,
        }
    }

    fn set_child(&mut self, dir: usize, name: Vec<u8>, index: usize) {
        if let NodeKind::Directory { children } = &mut self.nodes[dir].kind {
            children.insert(name, index);
        }
    }

    /// Directory over directory: new metadata, same children and overlay marks.
    fn update_dir(&mut self, index: usize, node: Node) {
        let old = &mut self.nodes[index];
        old.mode = node.mode;
        old.uid = node.uid;
        old.gid = node.gid;
        old.mtime = node.mtime;
        old.mtime_nsec = node.mtime_nsec;
        old.xattrs = node.xattrs;
        old.seq = node.seq;
        old.offset = node.offset;
        old.implied = false;
    }

    fn lookup(&self, path: &[Vec<u8>]) -> Option<usize> {
        let mut at = ROOT;
        for part in path {
            at = self.child(at, part)?;
        }
        Some(at)
    }

    /// The directory `path`, creating missing directories (mode 0755) on the way.
    fn parent_dir(&mut self, path: &[Vec<u8>], entry: &Entry) -> Result<usize> {
        self.parent_dir_of(path).map_err(|e| entry_error(entry, e))
    }

    fn parent_dir_of(&mut self, path: &[Vec<u8>]) -> std::result::Result<usize, String> {
        let mut at = ROOT;
        for (depth, part) in path.iter().enumerate() {
            at = match self.child(at, part) {
                Some(next) if self.is_dir(next) => next,
                Some(_) => {
                    let parent: Vec<u8> = path[..=depth].join(&b'/');
                    return Err(format!(
                        "its parent {:?} is not a directory",
                        shown(&parent)
                    ));
                }
                None => {
                    let index = self.push(Node::implied_dir());
                    self.set_child(at, part.clone(), index);
                    index
                }
            };
        }
        Ok(at)
    }
}

#[cfg(test)]
#[path = "tree_tests.rs"]
mod tests;
