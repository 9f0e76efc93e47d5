//! Tree tests: path treatment, later-wins, hard links in any order, aufs whiteouts.

use super::*;
use crate::build::test_support;

/// An entry whose header sits at 512 and whose data at 1024 of the tar.
fn entry(path: &str, kind: Kind) -> Entry {
    Entry {
        offset: 512,
        data_offset: 1024,
        ..test_support::entry(path, kind)
    }
}

fn file(path: &str, size: u64) -> Entry {
    Entry {
        size,
        ..entry(path, Kind::Regular)
    }
}

fn link(path: &str, target: &str) -> Entry {
    Entry {
        link: target.as_bytes().to_vec(),
        ..entry(path, Kind::HardLink)
    }
}

fn build(entries: Vec<Entry>, aufs: bool) -> Result<Tree> {
    let mut b = TreeBuilder::new(TreeOptions { aufs });
    for e in entries {
        b.add(e)?;
    }
    b.finish()
}

fn find<'a>(tree: &'a Tree, path: &str) -> Option<&'a Node> {
    let mut at = ROOT;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        match &tree.nodes[at].kind {
            NodeKind::Directory { children } => at = *children.get(part.as_bytes())?,
            _ => return None,
        }
    }
    tree.nodes.get(at)
}

fn err(entries: Vec<Entry>, aufs: bool) -> String {
    build(entries, aufs).unwrap_err().to_string()
}

#[test]
fn normalisation() {
    let n = |p: &str| normalise(p.as_bytes(), "name");
    assert_eq!(n("./a//b/").unwrap(), vec![b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(
        n("/etc/passwd").unwrap(),
        vec![b"etc".to_vec(), b"passwd".to_vec()]
    );
    assert_eq!(n("./").unwrap(), Vec::<Vec<u8>>::new());
    assert!(n("a/../../etc").unwrap_err().contains("`..`"));
    assert!(n("a\0b").unwrap_err().contains("NUL"));
    assert!(n(&"x".repeat(300))
        .unwrap_err()
        .contains("300-byte component"));
    assert!(n(&"x".repeat(255)).is_ok());
}

#[test]
fn hostile_names_name_the_entry() {
    let e = err(vec![file("../escape", 0)], false);
    assert!(
        e.contains("\"../escape\" at offset 512") && e.contains("`..`"),
        "{e}"
    );
    let e = err(vec![file(&format!("d/{}", "n".repeat(300)), 0)], false);
    assert!(e.contains("300-byte component"), "{e}");
    let e = err(vec![file("a\0b", 0)], false);
    assert!(e.contains("NUL"), "{e}");
    // Absolute names are made relative.
    let t = build(vec![file("/abs/name", 3)], false).unwrap();
    assert!(find(&t, "abs/name").is_some());
}

#[test]
fn later_wins_and_directories_merge() {
    let mut d2 = entry("d", Kind::Directory);
    d2.mode = 0o700;
    let t = build(
        vec![
            entry("d", Kind::Directory),
            file("d/a", 1),
            file("d/a", 2),
            d2,
            file("x", 1),
            entry("x", Kind::Directory),
            entry("y", Kind::Directory),
            file("y/inner", 1),
            file("y", 5),
        ],
        false,
    )
    .unwrap();
    assert_eq!(find(&t, "d").unwrap().mode, 0o700);
    assert!(matches!(
        find(&t, "d/a").unwrap().kind,
        NodeKind::Regular { size: 2, .. }
    ));
    assert!(matches!(
        find(&t, "x").unwrap().kind,
        NodeKind::Directory { .. }
    ));
    assert!(matches!(
        find(&t, "y").unwrap().kind,
        NodeKind::Regular { size: 5, .. }
    ));
    assert!(find(&t, "y/inner").is_none());
}

#[test]
fn implied_parents_and_counts() {
    let mut late = file("a/b/c", 1);
    late.mtime = 1_800_000_000;
    let t = build(vec![late, entry("a/sub", Kind::Directory)], false).unwrap();
    let a = find(&t, "a").unwrap();
    assert_eq!((a.mode, a.uid, a.mtime), (0o755, 0, 1_800_000_000));
    assert_eq!(a.nlink, 4, "a has two subdirectories");
    assert_eq!(find(&t, "").unwrap().nlink, 3);
    assert_eq!(find(&t, "a/b/c").unwrap().nlink, 1);
}

#[test]
fn hard_links_in_any_order() {
    let t = build(
        vec![
            link("early", "target"),
            file("target", 9),
            link("late", "target"),
            link("chain", "early"),
        ],
        false,
    )
    .unwrap();
    let target = find(&t, "target").unwrap();
    assert_eq!(target.nlink, 4);
    assert_eq!(find(&t, "early").unwrap(), target);
    assert_eq!(find(&t, "chain").unwrap(), target);
    // A later member over a deferred link's name wins.
    let t = build(vec![link("l", "t"), file("l", 1), file("t", 2)], false).unwrap();
    assert!(matches!(
        find(&t, "l").unwrap().kind,
        NodeKind::Regular { size: 1, .. }
    ));
    assert_eq!(find(&t, "t").unwrap().nlink, 1);
}

#[test]
fn hostile_hard_links() {
    let e = err(vec![link("a", "missing")], false);
    assert!(
        e.contains("\"a\" at offset 512") && e.contains("not in the archive"),
        "{e}"
    );
    let e = err(vec![link("a", "b"), link("b", "a")], false);
    assert!(e.contains("loop"), "{e}");
    let e = err(vec![entry("d", Kind::Directory), link("l", "d")], false);
    assert!(e.contains("to a directory"), "{e}");
    let e = err(vec![link("l", "../x")], false);
    assert!(e.contains("hard-link target contains `..`"), "{e}");
    let e = err(vec![file("f", 1), link("./", "f")], false);
    assert!(e.contains("root"), "{e}");
    // A link to itself that never existed.
    assert!(err(vec![link("self", "self")], false).contains("not in the archive"));
}

#[test]
fn root_and_parents() {
    let mut root = entry("./", Kind::Directory);
    root.mode = 0o700;
    let t = build(vec![root], false).unwrap();
    assert_eq!(t.nodes[ROOT].mode, 0o700);
    assert!(err(vec![file(".", 1)], false).contains("root can only be a directory"));
    let e = err(vec![file("f", 1), file("f/g", 1)], false);
    assert!(e.contains("parent \"f\" is not a directory"), "{e}");
}

#[test]
fn aufs_whiteouts() {
    let t = build(
        vec![
            entry("etc", Kind::Directory),
            file("etc/old", 4),
            file("etc/.wh.old", 0),
            file("opq/.wh..wh..opq", 0),
            file(".wh..wh.aufs", 0),
            file(".wh..wh.plnk/123.456", 0),
            file(".wh.gone", 0),
        ],
        true,
    )
    .unwrap();
    let old = find(&t, "etc/old").unwrap();
    assert_eq!(old.kind, NodeKind::CharDevice { major: 0, minor: 0 });
    assert_eq!(old.mode, 0);
    let etc = find(&t, "etc").unwrap();
    assert_eq!(
        etc.xattrs.get(&b"trusted.overlay.origin"[..]),
        Some(&Vec::new())
    );
    let opq = find(&t, "opq").unwrap();
    assert_eq!(
        opq.xattrs.get(&b"trusted.overlay.opaque"[..]),
        Some(&b"y".to_vec())
    );
    assert!(find(&t, ".wh..wh.aufs").is_none());
    assert!(find(&t, ".wh..wh.plnk").is_none());
    assert!(find(&t, "gone").is_some(), "a whiteout at the root level");
    // Refused: a whiteout naming nothing, or the root itself.
    for bad in ["d/.wh.", ".wh..", "./.wh..."] {
        let e = err(vec![file(bad, 0)], true);
        assert!(e.contains("names nothing"), "{bad}: {e}");
    }
    // Without --aufs these are ordinary files.
    let t = build(vec![file("etc/.wh.old", 0)], false).unwrap();
    assert!(find(&t, "etc/.wh.old").is_some());
}

#[test]
fn bad_xattrs_and_symlinks() {
    let mut e = file("f", 0);
    e.xattrs = vec![(b"user.big".to_vec(), vec![0u8; 65536])];
    let m = err(vec![e], false);
    assert!(
        m.contains("65536-byte value") && m.contains("offset 512"),
        "{m}"
    );
    let mut e = file("f", 0);
    e.xattrs = vec![(b"user.ok".to_vec(), vec![0u8; 65535])];
    assert!(build(vec![e], false).is_ok());
    let mut e = file("f", 0);
    e.xattrs = vec![(b"weird.name".to_vec(), b"v".to_vec())];
    assert!(err(vec![e], false).contains("no EROFS name prefix"));
    let mut e = file("f", 0);
    e.xattrs = vec![(
        format!("user.{}", "n".repeat(256)).into_bytes(),
        b"v".to_vec(),
    )];
    assert!(err(vec![e], false).contains("256 bytes after its prefix"));
    let s = entry("s", Kind::Symlink);
    assert!(err(vec![s], false).contains("symlink target of 0 bytes"));
    let mut s = entry("s", Kind::Symlink);
    s.link = vec![b'x'; 4096];
    assert!(err(vec![s], false).contains("4096 bytes"));
}
