//! 10.14: the FUSE tree as an unprivileged user sees it, against the kernel's EROFS of
//! the same image: stat, access, reads, listxattr and getxattr, with POSIX ACLs and
//! `trusted.*` xattrs in the image.

use std::path::Path;
use std::process::Command;

use crate::common::*;
use crate::rootless_support::*;

/// Walk a tree as the calling user and print, for every entry: lstat, access, the
/// xattr list and every value (or the errno of each), a read of the first bytes and a
/// directory listing: what an unprivileged user can tell about the tree.
const WALKER: &str = r#"
import errno, json, os, stat, sys
root = sys.argv[1]
def err(f):
    try:
        return f()
    except OSError as e:
        return "errno " + errno.errorcode.get(e.errno, str(e.errno))
out = {}
def visit(rel):
    p = os.path.join(root, rel) if rel else root
    st = os.lstat(p)
    e = {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid, "size": st.st_size,
         "nlink": st.st_nlink, "mtime_ns": st.st_mtime_ns}
    link = stat.S_ISLNK(st.st_mode)
    if not link:
        e["access"] = [os.access(p, m) for m in (os.R_OK, os.W_OK, os.X_OK)]
    names = err(lambda: sorted(os.listxattr(p, follow_symlinks=False)))
    e["listxattr"] = names
    wanted = set(names) if isinstance(names, list) else set()
    wanted |= {"trusted.t1", "trusted.x", "user.demo", "system.posix_acl_access", "system.posix_acl_default"}
    e["getxattr"] = {n: err(lambda: os.getxattr(p, n, follow_symlinks=False).hex()) for n in sorted(wanted)}
    if stat.S_ISREG(st.st_mode):
        e["read"] = err(lambda: open(p, "rb").read(64).hex())
    out[rel] = e
    if stat.S_ISDIR(st.st_mode):
        entries = err(lambda: sorted(os.listdir(p)))
        e["listdir"] = entries
        if isinstance(entries, list):
            for n in entries:
                visit(os.path.join(rel, n) if rel else n)
visit("")
print(json.dumps(out, sort_keys=True))
"#;

fn walk_as(user: &str, root: &Path) -> serde_json::Value {
    let out = run_as(
        user,
        &[("PATH".into(), "/usr/bin:/bin".into())],
        Path::new("/usr/bin/python3"),
        &["-c", WALKER, &root.to_string_lossy()],
    );
    ok(&format!("walk {} as {user}", root.display()), &out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The entries where two walks differ, one line each.
fn differences(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return vec!["not a walk".into()];
    };
    let mut diffs = Vec::new();
    for (path, ea) in a {
        match b.get(path) {
            None => diffs.push(format!("{path}: only in the first")),
            Some(eb) if eb != ea => diffs.push(format!("{path}:\n  fuse   {ea}\n  kernel {eb}")),
            _ => {}
        }
    }
    for path in b.keys().filter(|p| !a.contains_key(*p)) {
        diffs.push(format!("{path}: only in the second"));
    }
    diffs
}

/// A gzip layer with POSIX ACLs (a named user allowed where the mode denies, and denied
/// where the mode allows), a default ACL, and user.* and trusted.* xattrs.
const ACL_LAYER: &str = r#"
import gzip, io, struct, sys, tarfile
def acl(entries):
    # posix_acl_xattr: version 2, then (tag u16, perm u16, id u32), sorted by tag and id.
    return (struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in entries)).decode("utf-8", "surrogateescape")
U = 0xFFFFFFFF
nobody = 65534
allow = acl([(1, 6, U), (2, 4, nobody), (4, 4, U), (0x10, 4, U), (0x20, 0, U)])
deny = acl([(1, 6, U), (2, 0, nobody), (4, 4, U), (0x10, 4, U), (0x20, 4, U)])
dflt = acl([(1, 7, U), (4, 5, U), (0x20, 5, U)])
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
    def add(name, mode, data=None, pax=None, kind=tarfile.REGTYPE):
        i = tarfile.TarInfo(name)
        i.type, i.mode, i.mtime, i.uid, i.gid = kind, mode, 1700000000, 0, 0
        i.pax_headers = pax or {}
        if data is None:
            t.addfile(i)
        else:
            i.size = len(data)
            t.addfile(i, io.BytesIO(data))
    add("acl", 0o755, kind=tarfile.DIRTYPE, pax={"SCHILY.xattr.system.posix_acl_default": dflt})
    add("acl/allow", 0o640, b"allowed by the ACL\n", {"SCHILY.xattr.system.posix_acl_access": allow})
    add("acl/deny", 0o644, b"denied by the ACL\n", {"SCHILY.xattr.system.posix_acl_access": deny})
    add("acl/plain", 0o600, b"no ACL\n")
    add("xattrs", 0o644, b"x\n", {"SCHILY.xattr.user.demo": "hello", "SCHILY.xattr.trusted.x": "secret"})
open(sys.argv[1], "wb").write(gzip.compress(buf.getvalue(), mtime=0))
"#;

#[test]
fn fuse_matches_the_kernel_for_an_unprivileged_user() {
    let _serial = serial();
    if let Some(why) = cannot_run() {
        return skip("fuse_matches_the_kernel_for_an_unprivileged_user", why);
    }
    let space = Space::new("rl-view");
    let acl_dir = space.path("acl");
    std::fs::create_dir(&acl_dir).unwrap();
    let blob = acl_dir.join("layer.tar.gz");
    let out = Command::new("/usr/bin/python3")
        .args(["-c", ACL_LAYER])
        .arg(&blob)
        .output()
        .unwrap();
    ok("make the ACL layer", &out);
    let index = |dir: &Path| {
        let a: Vec<String> = vec![
            "index".into(),
            component().to_string_lossy().into_owned(),
            dir.join("layer.tar.gz").to_string_lossy().into_owned(),
            "--quiet".into(),
            "--tarindex".into(),
            dir.join("meta.erofs").to_string_lossy().into_owned(),
            "--zinfo".into(),
            dir.join("layer.zinfo").to_string_lossy().into_owned(),
        ];
        ok("index", &run_host(&a, T));
    };
    index(&acl_dir);
    space.fixture("basic");
    chown_tree(&acl_dir, NOBODY, NOGROUP);

    let _fuse = FuseOpenToAll::new();
    let mut total = 0;
    for name in ["acl", "basic"] {
        let dir = space.path(name);
        let s = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let dev = [
            s("meta.erofs"),
            "--zinfo".into(),
            s("layer.zinfo"),
            s("layer.tar.gz"),
        ];
        let fuse_root = dir.join("fuse-root");
        let fuse_nobody = dir.join("fuse-nobody");
        let kernel = dir.join("kernel");
        for d in [&fuse_root, &fuse_nobody, &kernel] {
            std::fs::create_dir(d).unwrap();
        }
        chown(&fuse_nobody, NOBODY, NOGROUP);
        let _cleanup = Cleanup(vec![fuse_root.clone(), fuse_nobody.clone(), kernel.clone()]);

        // The kernel's EROFS of the same device.
        let mut cat = vec![
            "cat".to_string(),
            component().to_string_lossy().into_owned(),
            "--tarindex".into(),
        ];
        cat.extend(dev.iter().cloned());
        let image = run_host(&cat, T);
        ok("cat", &image);
        let img = dir.join("device.img");
        std::fs::write(&img, &image.stdout).unwrap();
        assert!(Command::new("mount")
            .args(["-t", "erofs", "-o", "loop,ro"])
            .arg(&img)
            .arg(&kernel)
            .status()
            .unwrap()
            .success());
        // Root's FUSE mount (allow_other), and nobody's own.
        let mut m = vec![
            "mount".to_string(),
            component().to_string_lossy().into_owned(),
            "--tarindex".into(),
        ];
        m.extend(dev.iter().cloned());
        m.push(fuse_root.to_string_lossy().into_owned());
        ok("mount as root", &run_host(&m, T));
        let mut m: Vec<String> = vec![
            "mount".into(),
            space.s("component.wasm"),
            "--tarindex".into(),
        ];
        m.extend(dev.iter().cloned());
        m.push(fuse_nobody.to_string_lossy().into_owned());
        let m: Vec<&str> = m.iter().map(String::as_str).collect();
        ok("mount as nobody", &host_as("nobody", &space, "run", &m));

        let by_kernel = walk_as("nobody", &kernel);
        for (what, at) in [
            ("root's FUSE mount", &fuse_root),
            ("nobody's FUSE mount", &fuse_nobody),
        ] {
            let by_fuse = walk_as("nobody", at);
            let diffs = differences(&by_fuse, &by_kernel);
            assert!(
                diffs.is_empty(),
                "{name}: {what} as nobody differs from the kernel's EROFS in {} entries:\n{}",
                diffs.len(),
                diffs.join("\n")
            );
        }
        if name == "acl" {
            // The ACL cases really are what the kernel enforces here.
            let allow = &by_kernel["acl/allow"];
            eprintln!("acl: the kernel gives nobody {allow}");
        }
        let n = by_kernel.as_object().map_or(0, |o| o.len());
        total += n;
        ok(
            "umount as nobody",
            &host_as(
                "nobody",
                &space,
                "run",
                &["umount", &fuse_nobody.to_string_lossy()],
            ),
        );
        ok(
            "umount as root",
            &run_host(&["umount", &*fuse_root.to_string_lossy()], T),
        );
        assert!(Command::new("umount")
            .arg(&kernel)
            .status()
            .unwrap()
            .success());
        eprintln!(
            "{name}: {n} entries equal as nobody (FUSE by root, FUSE by nobody, kernel EROFS)"
        );
    }
    assert!(total > 0);
}
