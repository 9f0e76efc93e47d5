//! Published indexes against a real registry on 127.0.0.1 (Debian's docker-registry 2.8,
//! which has no referrers API, started by tests/registry/harness.py with TLS and token
//! auth): `erofs-host index oci://… --push` indexes every layer and publishes the artifact
//! under the referrers fallback tag; `cat`, `verify` and `mount` then find it without
//! `--tarindex`; a missing, tampered or mismatched index is refused with a clear error.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(300);

/// One registry per test: tests tamper with what they published.
struct Registry(HarnessRegistry);

impl std::ops::Deref for Registry {
    type Target = HarnessRegistry;
    fn deref(&self) -> &HarnessRegistry {
        &self.0
    }
}

impl Registry {
    fn start(tag: &str, images: &str) -> Option<Registry> {
        let args = ["--auth", "token", "--tls", "--images", images];
        HarnessRegistry::start("publish tests", &format!("publish-{tag}"), &args).map(Registry)
    }

    /// `erofs-host ARGS… --ca-file CA` with the credentials in the environment.
    fn run(&self, args: &[&str]) -> Output {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.extend(["--ca-file".to_string(), self.s("ca_file")]);
        self.run_host(&a, T)
    }

    fn push(&self, name: &str) -> Output {
        let c = component().to_string_lossy().into_owned();
        let out = self.run(&["index", &c, &self.oci(name), "--push", "--quiet"]);
        assert!(
            out.status.success(),
            "index --push {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Python with the harness's registry client, `c` logged in, `repo` set; for forging
    /// what a hostile pusher could push.
    fn python(&self, name: &str, script: &str) {
        let prelude = format!(
            "import sys, json; sys.path.insert(0, {dir:?}); import oci\n\
             c = oci.Client({url:?}, {ca:?}, {user:?}, {pw:?})\n\
             repo = {repo:?}\n",
            dir = root().join("tests/registry").to_string_lossy(),
            url = self.s("url"),
            ca = self.s("ca_file"),
            user = self.s("username"),
            pw = self.s("password"),
            repo = format!("fixtures/{name}"),
        );
        let out = Command::new("python3")
            .args(["-c", &format!("{prelude}{script}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The device our own index of a fixture's local blob gives: what the published index
/// must give too.
fn local_device(dir: &str, tmp: &Path) -> Vec<u8> {
    let f = fixture(dir);
    let c = component().to_string_lossy().into_owned();
    let meta = tmp
        .join(format!("{dir}.meta"))
        .to_string_lossy()
        .into_owned();
    let zinfo = tmp
        .join(format!("{dir}.zinfo"))
        .to_string_lossy()
        .into_owned();
    let (blob, gzip) = if dir == "plain-tar" {
        (f.join("layer.tar"), false)
    } else {
        (f.join("layer.tar.gz"), true)
    };
    let blob = blob.to_string_lossy().into_owned();
    let mut index = vec!["index", &c, &blob, "--tarindex", &meta, "--quiet"];
    if gzip {
        index.extend(["--zinfo", &zinfo]);
    }
    let out = run_host(&index, T);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cat = vec!["cat", &c, "--tarindex", &meta, &blob];
    if gzip {
        cat.extend(["--zinfo", &zinfo]);
    }
    let out = run_host(&cat, T);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn a_pushed_index_is_found_by_cat_verify_and_mount() {
    let Some(reg) = Registry::start("found", "basic,multilayer") else {
        return;
    };
    let tmp = TempDir::new("publish");
    let c = component().to_string_lossy().into_owned();
    let out = reg.push("multilayer");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("referrers list under tag sha256-"), "{text}");
    assert!(text.contains("6 blob(s) uploaded"), "{text}");
    // multilayer: aufs (gzip), plain-tar (tar), pigz (gzip).
    for (layer, dir) in [(0, "aufs"), (1, "plain-tar"), (2, "pigz")] {
        let n = layer.to_string();
        let out = reg.run(&["cat", &c, &reg.oci("multilayer"), "--layer", &n]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            sha256_hex(&out.stdout) == sha256_hex(&local_device(dir, tmp.path())),
            "layer {layer}: the published index gives other bytes than a local index"
        );
    }
    let again = reg.push("multilayer");
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(
        text.contains("0 blob(s) uploaded, 6 already there"),
        "{text}"
    );

    reg.push("basic");
    let out = reg.run(&["verify", &c, &reg.oci("basic")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if !is_root() || !Path::new("/dev/fuse").exists() {
        return skip("mount by reference", "needs root and /dev/fuse");
    }
    let mp = tmp.path().join("m");
    std::fs::create_dir(&mp).unwrap();
    let mps = mp.to_string_lossy().into_owned();
    let out = reg.run(&["mount", &c, &reg.oci("basic"), &mps, "--layer", "0"]);
    assert!(
        out.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failures = compare_tree(&mp, &fixture("basic").join("expected.json"));
    if !run_host(&["umount", &mps], T).status.success() {
        let _ = run_host(&["umount", "--lazy", &mps], T);
    }
    assert!(
        failures.is_empty(),
        "basic by reference: {}",
        failures.join("\n")
    );
}

#[test]
fn no_index_is_a_clear_error_that_says_how_to_make_one() {
    let Some(reg) = Registry::start("missing", "basic") else {
        return;
    };
    let c = component().to_string_lossy().into_owned();
    let out = reg.run(&["cat", &c, &reg.oci("basic")]);
    assert!(!out.status.success());
    assert_stderr_contains(&out, "no published index for image manifest sha256:");
    assert_stderr_contains(
        &out,
        "erofs-host index component oci://registry/repo:tag --push",
    );
    // A mount asks for nothing else and fails the same way, before mounting.
    let out = reg.run(&["verify", &c, &reg.oci("basic")]);
    assert_stderr_contains(&out, "no published index");
}

#[test]
fn a_tampered_index_blob_is_refused() {
    let Some(reg) = Registry::start("tampered", "pigz") else {
        return;
    };
    let c = component().to_string_lossy().into_owned();
    reg.push("pigz");
    let workdir = reg.s("workdir");
    let blobs = Path::new(&workdir).join("storage/docker/registry/v2/blobs/sha256");
    let out = reg.run(&["cat", &c, &reg.oci("pigz"), "--length", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Change one byte of the META blob where the registry stores it: the registry keeps
    // serving it under its old digest.
    let meta_digest = published_meta_digest(&reg, "pigz");
    let hex = meta_digest.trim_start_matches("sha256:");
    let data = blobs.join(&hex[..2]).join(hex).join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[1024] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    let out = reg.run(&["cat", &c, &reg.oci("pigz"), "--length", "1"]);
    assert!(!out.status.success());
    assert_stderr_contains(&out, &format!("not the {meta_digest} its descriptor names"));
}

/// The digest of the META blob of layer 0 in the published index of image `name`.
fn published_meta_digest(reg: &Registry, name: &str) -> String {
    let file = std::env::temp_dir().join(format!(
        "erofs-e2e-publish-digest-{}-{name}",
        std::process::id()
    ));
    reg.python(
        name,
        &format!(
            "tag = 'sha256-' + c.get_manifest(repo, 'latest').headers['Docker-Content-Digest'].split(':')[1]\n\
             lst = json.loads(c.get_manifest(repo, tag, 'application/vnd.oci.image.index.v1+json').body)\n\
             art = json.loads(c.get_manifest(repo, lst['manifests'][-1]['digest']).body)\n\
             meta = [l for l in art['layers'] if l['mediaType'].endswith('tarindex.v1')][0]['digest']\n\
             open({:?}, 'w').write(meta)\n",
            file.to_string_lossy()
        ),
    );
    let digest = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    digest
}

#[test]
fn an_index_for_another_layer_or_tar_is_refused() {
    let Some(reg) = Registry::start("forged", "multilayer") else {
        return;
    };
    let c = component().to_string_lossy().into_owned();
    reg.push("multilayer");
    // A hostile pusher swaps the annotations of layers 1 and 2 (META and ZINFO stay where
    // they are): each entry now claims another layer's digest and diff_id.
    for key in [
        "org.erofs-wasm.layer.digest",
        "org.erofs-wasm.layer.diff-id",
    ] {
        reg.python(
            "multilayer",
            &format!(
                "tag = 'sha256-' + c.get_manifest(repo, 'latest').headers['Docker-Content-Digest'].split(':')[1]\n\
                 lst = json.loads(c.get_manifest(repo, tag, 'application/vnd.oci.image.index.v1+json').body)\n\
                 art = json.loads(c.get_manifest(repo, lst['manifests'][-1]['digest']).body)\n\
                 by_index = {{}}\n\
                 for l in art['layers']: by_index.setdefault(l['annotations']['org.erofs-wasm.layer.index'], l['annotations'][{key:?}])\n\
                 for l in art['layers']:\n\
                 \x20   i = l['annotations']['org.erofs-wasm.layer.index']\n\
                 \x20   if i in ('1', '2'): l['annotations'][{key:?}] = by_index['2' if i == '1' else '1']\n\
                 body = json.dumps(art).encode()\n\
                 d = c.push_manifest(repo, oci.sha256_digest(body), body, 'application/vnd.oci.image.manifest.v1+json')\n\
                 lst['manifests'][-1]['digest'] = d\n\
                 lst['manifests'][-1]['size'] = len(body)\n\
                 c.push_manifest(repo, tag, json.dumps(lst).encode(), 'application/vnd.oci.image.index.v1+json')\n"
            ),
        );
        let out = reg.run(&[
            "cat",
            &c,
            &reg.oci("multilayer"),
            "--layer",
            "2",
            "--length",
            "1",
        ]);
        assert!(!out.status.success(), "{key}: a forged index was used");
        let needle = if key.ends_with("digest") {
            "this index is for another layer"
        } else {
            "this index is for another tar"
        };
        assert_stderr_contains(&out, needle);
        // Layer 0 was left alone and still works. (The first forgery is undone by the
        // second only for the field it touched, so re-push between the two.)
        let out = reg.run(&[
            "cat",
            &c,
            &reg.oci("multilayer"),
            "--layer",
            "0",
            "--length",
            "1",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        reg.push("multilayer");
    }
}
