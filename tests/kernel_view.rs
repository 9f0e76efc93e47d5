//! The kernel's view: loop-mount the `cat` output read-only with the kernel's EROFS and
//! compare the tree with the fixture's expected.json.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn kernel_mount_of_cat_output_matches_expected() {
    if !is_root() {
        return skip(
            "kernel_mount_of_cat_output_matches_expected",
            "needs root for mount -o loop",
        );
    }
    for dir in ALL_FIXTURES {
        let tmp = TempDir::new("kview");
        let image = tmp.path().join("device.img");
        let out = run_host(
            &[&["cat".to_string()][..], &device_args(dir)].concat(),
            Duration::from_secs(120),
        );
        assert!(
            out.status.success(),
            "{dir}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&image, &out.stdout).unwrap();
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let status = Command::new("mount")
            .args(["-t", "erofs", "-o", "loop,ro"])
            .arg(&image)
            .arg(&mnt)
            .status()
            .unwrap();
        if !status.success() {
            return skip(
                "kernel_mount_of_cat_output_matches_expected",
                "mount -t erofs -o loop failed (no erofs or loop here?)",
            );
        }
        let guard = MountGuard(mnt.clone());
        let failures = compare_tree(&mnt, &fixture(dir).join("expected.json"));
        drop(guard);
        assert!(
            failures.is_empty(),
            "{dir}: {} failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
        eprintln!("{dir}: kernel view matches expected.json (0 failed)");
    }
}
