#!/usr/bin/env python3
"""Test harness for erofs-wasm's network path (issue 6): a real OCI registry on 127.0.0.1
holding the fixture layers as images, a token server, and a fault-injecting proxy.

    harness.py start --auth none|basic|token [--tls] [--workdir DIR] [--token-ttl S] ...
    harness.py stop --workdir DIR
    harness.py proxy (--workdir DIR | --upstream 127.0.0.1:PORT ...) --fault F [--every N] ...
    harness.py selftest

See README.md beside this file for the JSON each command prints. Everything listens on
127.0.0.1 only. As a library: `import harness; info = harness.start(auth="token")`,
`harness.start_proxy(workdir=info["workdir"], fault="500")`, `harness.stop(info["workdir"])`.

Background processes (all recorded in WORKDIR/pids/, all stopped by `stop`):
  supervisor  `harness.py _serve`: runs the token server (token mode) in a thread and
              docker-registry as its child (which gets SIGTERM if the supervisor dies);
              exits, stopping the registry, on SIGTERM/SIGINT/SIGHUP, when WORKDIR is
              removed, after --max-lifetime, or when --watch-pid's process ends;
  registry    /usr/bin/docker-registry serve WORKDIR/config.yml;
  proxy       `harness.py _proxy`, one per `proxy` command, same exit rules.
"""

import argparse
import ctypes
import json
import os
import secrets
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import oci  # noqa: E402
import pki  # noqa: E402

FIXTURES = HERE.parent / "fixtures"
MARKER = ".erofs-registry-harness"   # only directories holding this file are ever removed
SERVICE = "erofs-test-registry"
ISSUER = "erofs-test-token-issuer"
USERNAME = "tester"
DEFAULT_MAX_LIFETIME = 7200          # seconds: a leaked server goes away by itself
TOOLS = {"docker-registry": "docker-registry", "htpasswd": "apache2-utils", "openssl": "openssl"}

# The single-layer fixture images: name -> layer file in tests/fixtures/NAME/.
SINGLE = {"basic": "layer.tar.gz", "multimember": "layer.tar.gz", "pigz": "layer.tar.gz",
          "aufs": "layer.tar.gz", "large": "layer.tar.gz", "plain-tar": "layer.tar"}
# Images built from those layers (see push_fixtures).
DERIVED = ["multi", "nomediatype", "docker", "zstd", "multilayer"]
ALL_IMAGES = list(SINGLE) + DERIVED


class HarnessError(Exception):
    pass


def log(msg):
    print(f"harness: {msg}", file=sys.stderr, flush=True)


# --- processes ---------------------------------------------------------------------------

def proc_start_time(pid):
    """The process's start time in clock ticks (/proc/PID/stat field 22) and its state,
    or None if there is no such process. Together with the pid it names a process for
    good: a recycled pid has another start time."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[19]), fields[0]
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def record_pid(d: Path, name, pid):
    (d / "pids").mkdir(exist_ok=True)
    st = proc_start_time(pid)
    (d / "pids" / f"{name}.json").write_text(json.dumps({"pid": pid, "start": st[0] if st else None}))


def _is_running(pid, start):
    st = proc_start_time(pid)
    if st is None or st[0] != start:
        return False
    if st[1] in ("Z", "X"):  # a zombie: done, just not reaped (reap it if it is ours)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def kill_recorded(d: Path, grace=5.0):
    """SIGTERM every process recorded under d (proxies first, registry last), then
    SIGKILL what is still there after `grace` seconds."""
    recs = []
    for f in sorted(d.rglob("pids/*.json"), key=lambda p: ("proxy" not in p.name, "registry" in p.name)):
        try:
            r = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if r.get("pid") and _is_running(r["pid"], r.get("start")):
            recs.append(r)
    for r in recs:
        try:
            os.kill(r["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_is_running(r["pid"], r["start"]) for r in recs):
        time.sleep(0.05)
    for r in recs:
        if _is_running(r["pid"], r["start"]):
            try:
                os.kill(r["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
    while any(_is_running(r["pid"], r["start"]) for r in recs) and time.monotonic() < deadline + 5:
        time.sleep(0.05)


def _set_pdeathsig():
    """In the child, before exec: get SIGTERM when the parent (thread) dies."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_daemon(argv, d: Path, name):
    """Start a background process of ours whose first stdout line is its JSON ready
    message; its stderr goes to d/NAME.log. Returns the Popen."""
    err = open(d / f"{name}.log", "ab")
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                         close_fds=True)
    err.close()
    record_pid(d, name, p.pid)
    return p


def read_ready(p, d: Path, name, timeout):
    """Wait for the daemon's one JSON line; on EOF or timeout raise with its log."""
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise HarnessError(f"{name} not ready after {timeout}s; log:\n{tail(d / f'{name}.log')}")
        r, _, _ = select.select([p.stdout], [], [], left)
        if r:
            chunk = os.read(p.stdout.fileno(), 4096)
            if not chunk:
                p.wait(5)
                raise HarnessError(f"{name} exited ({p.returncode}) before it was ready; log:\n"
                                   f"{tail(d / f'{name}.log')}")
            buf += chunk
    p.stdout.close()
    return json.loads(buf.split(b"\n", 1)[0])


def tail(path, n=40):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def detach_stdout():
    """A daemon, once ready, lets go of the pipe its parent reads (fd 1)."""
    sys.stdout.flush()
    fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 1)
    os.close(fd)


def install_stop_signals():
    ev = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, lambda *_: ev.set())
    return ev


def watch(ev, d: Path, max_lifetime, watch_pid, alive=lambda: True):
    """Block until it is time to go: a signal, the workdir's marker gone, the lifetime
    over, the watched process gone, or `alive()` false."""
    t0 = time.monotonic()
    wp = proc_start_time(watch_pid)[0] if watch_pid and proc_start_time(watch_pid) else None
    while not ev.wait(0.5):
        if not (d / MARKER).exists():
            return "workdir removed"
        if max_lifetime and time.monotonic() - t0 > max_lifetime:
            return "max lifetime reached"
        if watch_pid and not _is_running(watch_pid, wp):
            return f"watched process {watch_pid} ended"
        if not alive():
            return "child exited"
    return "signal"


# --- workdir ------------------------------------------------------------------------------

def prepare_workdir(workdir, prefix="erofs-registry-"):
    if workdir is None:
        d = Path(tempfile.mkdtemp(prefix=prefix))
    else:
        d = Path(workdir).resolve()
        if d.exists() and any(d.iterdir()):
            raise HarnessError(f"workdir {d} exists and is not empty")
        d.mkdir(parents=True, exist_ok=True)
    (d / MARKER).write_text("made by tests/registry/harness.py; `harness.py stop --workdir` removes it\n")
    return d


def stop(workdir):
    """Stop everything recorded under workdir and remove it. Safe to repeat, and on a
    start that failed part way. Refuses a directory that the harness did not make."""
    d = Path(workdir).resolve()
    if not d.exists():
        return False
    if not (d / MARKER).exists():
        raise HarnessError(f"{d} was not made by the harness (no {MARKER}); not touching it")
    kill_recorded(d)
    shutil.rmtree(d, ignore_errors=True)
    return True


# --- the registry ---------------------------------------------------------------------------

def check_tools():
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        pkgs = " ".join(sorted({TOOLS[t] for t in missing}))
        raise HarnessError(f"missing {', '.join(missing)}: apt-get install -y {pkgs}")


def registry_config(d: Path, cfg, port, realm):
    """docker-registry 2.8's config.yml (JSON strings are valid YAML scalars)."""
    q = json.dumps
    lines = [
        "version: 0.1",
        "log:", "  level: info", "  formatter: text", "  accesslog:", "    disabled: false",
        "storage:", "  filesystem:", f"    rootdirectory: {q(str(d / 'storage'))}",
        "  delete:", "    enabled: true",
        "  maintenance:", "    uploadpurging:", "      enabled: false",
        "http:", f"  addr: {q(f'127.0.0.1:{port}')}", f"  secret: {q(cfg['http_secret'])}",
    ]
    if cfg["tls"]:
        lines += ["  tls:", f"    certificate: {q(str(d / 'server.crt'))}", f"    key: {q(str(d / 'server.key'))}"]
    lines += ["health:", "  storagedriver:", "    enabled: false"]
    if cfg["auth"] == "basic":
        lines += ["auth:", "  htpasswd:", "    realm: erofs-test", f"    path: {q(str(d / 'htpasswd'))}"]
    elif cfg["auth"] == "token":
        lines += ["auth:", "  token:", f"    realm: {q(realm)}", f"    service: {q(SERVICE)}",
                  f"    issuer: {q(ISSUER)}", f"    rootcertbundle: {q(str(d / 'token.crt'))}"]
    (d / "config.yml").write_text("\n".join(lines) + "\n")


def registry_ready(url, ca_file, timeout=0.5):
    ctx = ssl.create_default_context(cafile=ca_file) if ca_file else None
    try:
        with oci.loopback_opener(ctx).open(url + "/v2/", timeout=timeout) as r:
            return r.status == 200
    except urllib.error.HTTPError as e:
        return e.code == 401
    except (OSError, ssl.SSLError):
        return False


def serve_main(workdir):
    """The supervisor (`harness.py _serve`): token server + docker-registry."""
    d = Path(workdir)
    cfg = json.loads((d / "serve.json").read_text())
    ev = install_stop_signals()
    scheme = "https" if cfg["tls"] else "http"
    ca = str(d / "ca.crt") if cfg["tls"] else None
    tls_ctx = None
    if cfg["tls"]:
        from httpserver import server_tls_context
        tls_ctx = server_tls_context(str(d / "server.crt"), str(d / "server.key"))

    token, realm = None, None
    if cfg["auth"] == "token":
        from token_server import TokenConfig, TokenServer
        signer = pki.JwtSigner(str(d / "token.key"), str(d / "token.crt"))
        tcfg = TokenConfig(signer, SERVICE, ISSUER, cfg["username"], cfg["password"], cfg["token_ttl"],
                           cfg["anonymous_pull"], str(d / "token-requests.log"))
        token = TokenServer(tcfg, tls_ctx)
        threading.Thread(target=token.serve_forever, daemon=True).start()
        realm = f"{scheme}://127.0.0.1:{token.port}/token"

    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    reg = None
    try:
        # A free port can be taken between our probe and the registry's bind: try again.
        for attempt in range(5):
            port = free_port()
            registry_config(d, cfg, port, realm)
            out = open(d / "registry.log", "ab")
            reg = subprocess.Popen([shutil.which("docker-registry"), "serve", str(d / "config.yml")],
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                   preexec_fn=_set_pdeathsig)
            out.close()
            record_pid(d, "registry", reg.pid)
            url = f"{scheme}://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while reg.poll() is None and time.monotonic() < deadline and not ev.is_set():
                if registry_ready(url, ca):
                    break
                time.sleep(0.05)
            else:
                if ev.is_set():
                    return 1
                if reg.poll() is None:
                    raise HarnessError("docker-registry did not answer in 30 s")
                continue  # it exited (port taken?): try another port
            break
        else:
            raise HarnessError("docker-registry would not start; see registry.log")

        print(json.dumps({"registry_port": port, "registry_pid": reg.pid,
                          "token_port": token.port if token else None, "realm": realm}), flush=True)
        detach_stdout()
        why = watch(ev, d, cfg["max_lifetime"], cfg["watch_pid"], alive=lambda: reg.poll() is None)
        log(f"supervisor: stopping ({why})")
        return 0
    finally:
        if reg and reg.poll() is None:
            reg.terminate()
            try:
                reg.wait(5)
            except subprocess.TimeoutExpired:
                reg.kill()
                reg.wait()
        if token:
            token.shutdown()


def start(auth="none", tls=True, workdir=None, token_ttl=300, anonymous_pull=False,
          images=None, fixtures=FIXTURES, max_lifetime=DEFAULT_MAX_LIFETIME, watch_pid=None,
          timeout=60):
    """Start a registry (and token server) in the background, push the fixture images,
    and return the info dict that the `start` command prints. On any failure, whatever
    was started is stopped and the workdir removed, and the error is raised."""
    if auth not in ("none", "basic", "token"):
        raise HarnessError(f"unknown auth {auth!r}")
    names = ALL_IMAGES if images is None else list(images)
    unknown = set(names) - set(ALL_IMAGES)
    if unknown:
        raise HarnessError(f"unknown images {sorted(unknown)}; known: {', '.join(ALL_IMAGES)}")
    check_tools()
    d = prepare_workdir(workdir)
    try:
        paths = pki.make_pki(d)
        username = USERNAME if auth != "none" else None
        password = secrets.token_urlsafe(12) if auth != "none" else None
        if auth == "basic":
            r = subprocess.run(["htpasswd", "-Bbn", username, password], capture_output=True, check=True)
            (d / "htpasswd").write_bytes(r.stdout)
        serve_cfg = {"auth": auth, "tls": tls, "username": username, "password": password,
                     "token_ttl": token_ttl, "anonymous_pull": anonymous_pull,
                     "http_secret": secrets.token_hex(16), "max_lifetime": max_lifetime,
                     "watch_pid": watch_pid}
        (d / "serve.json").write_text(json.dumps(serve_cfg))
        os.chmod(d / "serve.json", 0o600)
        p = spawn_daemon([sys.executable, str(HERE / "harness.py"), "_serve", "--workdir", str(d)],
                         d, "supervisor")
        ready = read_ready(p, d, "supervisor", timeout)
        if os.environ.get("HARNESS_FAIL_AFTER_SERVERS"):  # for the self-test of cleanup
            raise HarnessError("failing on purpose (HARNESS_FAIL_AFTER_SERVERS)")

        scheme = "https" if tls else "http"
        registry = f"127.0.0.1:{ready['registry_port']}"
        info = {
            "registry": registry,
            "url": f"{scheme}://{registry}",
            "auth": auth,
            "tls": tls,
            "ca_file": paths["ca.crt"] if tls else None,
            "cert_file": paths["server.crt"] if tls else None,
            "key_file": paths["server.key"] if tls else None,
            "username": username,
            "password": password,
            "token_server": f"127.0.0.1:{ready['token_port']}" if ready["token_port"] else None,
            "realm": ready["realm"],
            "service": SERVICE if auth == "token" else None,
            "issuer": ISSUER if auth == "token" else None,
            "token_ttl": token_ttl if auth == "token" else None,
            "token_log": str(d / "token-requests.log") if auth == "token" else None,
            "workdir": str(d),
            "pid_dir": str(d / "pids"),
            "registry_log": str(d / "registry.log"),
            "images": {},
        }
        client = oci.Client(info["url"], info["ca_file"], username, password)
        info["images"] = push_fixtures(client, registry, Path(fixtures), names)
        (d / "state.json").write_text(json.dumps(info, indent=1))
        os.chmod(d / "state.json", 0o600)
        return info
    except BaseException:
        stop(d)
        raise


# --- the fixture images -----------------------------------------------------------------------

def _fixture(fixtures: Path, name):
    """(layer bytes, media type, diff_id) of tests/fixtures/NAME."""
    f = fixtures / name / SINGLE[name]
    if not f.exists():
        raise HarnessError(f"fixture layer {f} is missing")
    data = f.read_bytes()
    exp = json.loads((fixtures / name / "expected.json").read_text())
    diff_id = "sha256:" + exp["tar_sha256"]
    if name == "plain-tar":
        return data, oci.OCI_LAYER_TAR, oci.sha256_digest(data)
    return data, oci.OCI_LAYER_GZIP, diff_id


def push_fixtures(client: oci.Client, registry, fixtures: Path, names):
    """Push the images and describe them (see README.md). Repositories are fixtures/NAME,
    tag latest. A blob already pushed in this run is mounted instead of uploaded again."""
    images = {}
    pushed = {}    # blob digest -> the first repository that got it
    have = set()   # (repository, blob digest) already there

    def blob(repo, data):
        dg = oci.sha256_digest(data)
        if (repo, dg) not in have:
            client.push_blob(repo, data, mount_from=pushed.get(dg))
            pushed.setdefault(dg, repo)
            have.add((repo, dg))

    def desc(media_type, data, **extra):
        return dict({"mediaType": media_type, "digest": oci.sha256_digest(data), "size": len(data)}, **extra)

    def image(repo, layers, platform=("amd64", None), manifest_type=oci.OCI_MANIFEST,
              config_type=oci.OCI_CONFIG, with_media_type=True, tag="latest"):
        """Push config + layers + manifest. layers: [(fixture, data, media_type, diff_id)]."""
        arch, variant = platform
        config = {"architecture": arch, "os": "linux",
                  "rootfs": {"type": "layers", "diff_ids": [l[3] for l in layers]},
                  "config": {}, "history": [{"created_by": f"erofs-wasm test fixture {l[0]}"} for l in layers]}
        if variant:
            config["variant"] = variant
        cfg_bytes = json.dumps(config, sort_keys=True).encode()
        blob(repo, cfg_bytes)
        for l in layers:
            blob(repo, l[1])
        man = {"schemaVersion": 2}
        if with_media_type:
            man["mediaType"] = manifest_type
        man["config"] = desc(config_type, cfg_bytes)
        man["layers"] = [desc(l[2], l[1]) for l in layers]
        body = json.dumps(man, indent=2).encode()
        dg = client.push_manifest(repo, tag, body, manifest_type)
        return {"manifest_digest": dg, "manifest_size": len(body),
                "manifest_media_type": manifest_type if with_media_type else None,
                "layers": [{"fixture": l[0], "digest": oci.sha256_digest(l[1]), "size": len(l[1]),
                            "media_type": l[2]} for l in layers]}

    def describe(name, repo, pushed_image, **extra):
        e = {"reference": f"{registry}/{repo}:latest",
             "digest_reference": f"{registry}/{repo}@{pushed_image['manifest_digest']}",
             "repository": repo, "tag": "latest"}
        e.update(pushed_image)
        if len(e["layers"]) == 1:
            l = e["layers"][0]
            e.update(fixture=l["fixture"], layer_digest=l["digest"], layer_size=l["size"],
                     media_type=l["media_type"], fixture_dir=str(fixtures / l["fixture"]))
        e.update(extra)
        images[name] = e

    layer = {}

    def lay(n):
        if n not in layer:
            data, mt, diff = _fixture(fixtures, n)
            layer[n] = (n, data, mt, diff)
        return layer[n]

    # basic first: the derived images mount its layer.
    for name in sorted(names, key=lambda n: (n != "basic", ALL_IMAGES.index(n))):
        repo = f"fixtures/{name}"
        if name in SINGLE:
            describe(name, repo, image(repo, [lay(name)]))
        elif name == "nomediatype":
            # OCI allows a manifest without mediaType; it is still sent as an OCI manifest.
            describe(name, repo, image(repo, [lay("basic")], with_media_type=False))
        elif name == "docker":
            n, data, _, diff = lay("basic")
            describe(name, repo, image(repo, [(n, data, oci.DOCKER_LAYER_GZIP, diff)],
                                       manifest_type=oci.DOCKER_MANIFEST, config_type=oci.DOCKER_CONFIG))
        elif name == "zstd":
            # Only the media type matters (a zstd layer must be refused as unsupported);
            # the bytes are the aufs gzip layer, not real zstd.
            n, data, _, diff = lay("aufs")
            describe(name, repo, image(repo, [(n, data, oci.OCI_LAYER_ZSTD, diff)]))
        elif name == "multilayer":
            describe(name, repo, image(repo, [lay("aufs"), lay("plain-tar"), lay("pigz")]))
        elif name == "multi":
            # An image index: linux/amd64 and linux/arm64 (no `variant`, as often in the
            # wild) are both the basic layer; linux/arm/v7 (with a variant) is the pigz
            # layer, so that choosing it can be told apart by content.
            plats = [("amd64", None, "basic"), ("arm64", None, "basic"), ("arm", "v7", "pigz")]
            entries, platforms = [], {}
            for arch, variant, fx in plats:
                m = image(repo, [lay(fx)], platform=(arch, variant), tag=f"{arch}{variant or ''}")
                p = {"architecture": arch, "os": "linux"}
                if variant:
                    p["variant"] = variant
                entries.append({"mediaType": oci.OCI_MANIFEST, "digest": m["manifest_digest"],
                                "size": m["manifest_size"], "platform": p})
                l = m["layers"][0]
                platforms["/".join(filter(None, ["linux", arch, variant]))] = {
                    "manifest_digest": m["manifest_digest"], "manifest_size": m["manifest_size"],
                    "fixture": fx, "layer_digest": l["digest"], "layer_size": l["size"],
                    "media_type": l["media_type"]}
            body = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": entries},
                              indent=2).encode()
            dg = client.push_manifest(repo, "latest", body, oci.OCI_INDEX)
            b = platforms["linux/amd64"]
            describe(name, repo, {"manifest_digest": dg, "manifest_size": len(body),
                                  "manifest_media_type": oci.OCI_INDEX,
                                  "layers": [{"fixture": "basic", "digest": b["layer_digest"],
                                              "size": b["layer_size"], "media_type": b["media_type"]}]},
                     platforms=platforms)
    return images


# --- the proxy --------------------------------------------------------------------------------

def start_proxy(workdir=None, upstream=None, fault="none", every=1, first=1, limit=None,
                delay_ms=20, extra_bytes=1000, match=None, plain=False, ca_file=None,
                cert_file=None, key_file=None, upstream_plain=False, log_path=None,
                max_lifetime=DEFAULT_MAX_LIFETIME, watch_pid=None, timeout=30,
                rtt_ms=None, rate_mbit=None, link_only=False):
    """Start a fault proxy in the background; returns the dict the `proxy` command prints.
    With `workdir` (a `start`'s workdir) the upstream, TLS files and auth challenge come
    from there, and `stop(workdir)` stops the proxy too; its own directory is then
    WORKDIR/proxies/proxy-*/. Without it, a temporary directory is made; pass `upstream`,
    and `ca_file` to reach a TLS upstream, `cert_file`/`key_file` to serve TLS.
    `rtt_ms` / `rate_mbit`: clients reach the proxy through an emulated link (link.py)
    with that round-trip time and rate cap; its connection log is `links_log`.
    `link_only`: the link relays straight to the registry, below its TLS, without the
    fault proxy (which speaks HTTP/1.1 only), so a client and the registry agree on
    HTTP/2 by ALPN as they would on a real link; there is no request log then."""
    from proxy import FAULTS
    if fault not in FAULTS:
        raise HarnessError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
    if fault == "redirect" and not workdir:
        raise HarnessError("proxy: the redirect fault needs --workdir (it serves the registry's storage)")
    challenge, store_dir = None, None
    if workdir:
        st = json.loads((Path(workdir) / "state.json").read_text())
        store_dir = str(Path(workdir) / "storage") if fault == "redirect" else None
        upstream = upstream or st["registry"]
        if st["tls"]:
            ca_file = ca_file or st["ca_file"]
            cert_file = cert_file or st["cert_file"]
            key_file = key_file or st["key_file"]
        else:
            upstream_plain = True
        if st["auth"] == "token":
            challenge = f'Bearer realm="{st["realm"]}",service="{st["service"]}"'
        elif st["auth"] == "basic":
            challenge = 'Basic realm="erofs-test"'
        (Path(workdir) / "proxies").mkdir(exist_ok=True)
        d = Path(tempfile.mkdtemp(prefix="proxy-", dir=Path(workdir) / "proxies"))
        (d / MARKER).write_text("proxy directory made by tests/registry/harness.py\n")
    else:
        d = prepare_workdir(None, prefix="erofs-proxy-")
    if not upstream:
        raise HarnessError("proxy: give --upstream or --workdir")
    tls = not plain and bool(cert_file and key_file)
    if not plain and not tls and not upstream_plain:
        raise HarnessError("proxy: serving TLS needs --cert and --key (or --workdir); else say --plain")
    cfg = {"upstream": upstream, "fault": fault, "every": every, "first": first, "limit": limit,
           "delay_ms": delay_ms, "extra": extra_bytes, "match": match, "tls": tls,
           "cert_file": cert_file, "key_file": key_file,
           "upstream_tls": not upstream_plain and bool(ca_file), "ca_file": ca_file,
           "log": str(Path(log_path).resolve()) if log_path else str(d / "requests.log"),
           "challenge": challenge, "store_dir": store_dir,
           "max_lifetime": max_lifetime, "watch_pid": watch_pid,
           "rtt_ms": rtt_ms, "rate_mbit": rate_mbit, "links_log": str(d / "links.log"),
           "link_only": link_only}
    (d / "proxy.json").write_text(json.dumps(cfg))
    try:
        p = spawn_daemon([sys.executable, str(HERE / "harness.py"), "_proxy", "--workdir", str(d)], d, "proxy")
        return read_ready(p, d, "proxy", timeout)
    except BaseException:
        stop(d)
        raise


def proxy_main(workdir):
    """The proxy daemon (`harness.py _proxy`)."""
    from httpserver import server_tls_context
    from proxy import FaultProxy, ProxyConfig
    d = Path(workdir)
    cfg = json.loads((d / "proxy.json").read_text())
    ev = install_stop_signals()
    host, _, port = cfg["upstream"].rpartition(":")
    up_ctx = ssl.create_default_context(cafile=cfg["ca_file"]) if cfg["upstream_tls"] else None
    pcfg = ProxyConfig(host, int(port), cfg["fault"], up_ctx, cfg["every"], cfg["first"], cfg["limit"],
                       cfg["delay_ms"], cfg["extra"], cfg["match"], cfg["log"], cfg["challenge"],
                       cfg["store_dir"])
    srv = FaultProxy(pcfg, server_tls_context(cfg["cert_file"], cfg["key_file"]) if cfg["tls"] else None)
    open(cfg["log"], "a").close()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    # Clients reach the proxy through an emulated link when a round-trip time or a rate
    # cap is asked for; the proxy's own port stays reachable as `direct`.
    port, link = srv.port, None
    if cfg.get("rtt_ms") is not None or cfg.get("rate_mbit") is not None:
        from link import Link
        open(cfg["links_log"], "a").close()
        up_host, _, up_port = cfg["upstream"].rpartition(":")
        behind = (up_host, int(up_port)) if cfg.get("link_only") else ("127.0.0.1", srv.port)
        link = Link(behind, cfg.get("rtt_ms") or 0.0, cfg.get("rate_mbit"), cfg["links_log"])
        threading.Thread(target=link.serve_forever, daemon=True).start()
        port = link.port
    print(json.dumps({"proxy": f"127.0.0.1:{port}", "pid": os.getpid(),
                      "direct": f"127.0.0.1:{srv.port}",
                      "rtt_ms": cfg.get("rtt_ms"), "rate_mbit": cfg.get("rate_mbit"),
                      "links_log": cfg["links_log"] if link else None,
                      "url": f"{'https' if cfg['tls'] else 'http'}://127.0.0.1:{port}",
                      "tls": cfg["tls"], "ca_file": cfg["ca_file"] if cfg["tls"] else None,
                      "store": f"127.0.0.1:{srv.store.port}" if srv.store else None,
                      "upstream": cfg["upstream"], "fault": cfg["fault"], "log": cfg["log"],
                      "workdir": str(d)}), flush=True)
    detach_stdout()
    why = watch(ev, d, cfg["max_lifetime"], cfg["watch_pid"])
    log(f"proxy: stopping ({why})")
    if link:
        link.shutdown()
    srv.shutdown()
    return 0


# --- command line -------------------------------------------------------------------------------

def main(argv=None):
    from proxy import FAULTS
    ap = argparse.ArgumentParser(prog="harness.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def lifetime_opts(p):
        p.add_argument("--max-lifetime", type=int, default=DEFAULT_MAX_LIFETIME,
                       help="seconds after which the servers stop by themselves (0: never)")
        p.add_argument("--watch-pid", type=int,
                       help="stop by itself when this process ends (a test passes its own pid)")

    s = sub.add_parser("start", help="start a registry with the fixture images; print one JSON line")
    s.add_argument("--auth", choices=["none", "basic", "token"], default="none")
    s.add_argument("--tls", action="store_true", help="serve HTTPS with a test CA (else plain HTTP)")
    s.add_argument("--workdir", help="new or empty directory for everything (default: a temporary one)")
    s.add_argument("--token-ttl", type=int, default=300, help="token lifetime in seconds (token mode)")
    s.add_argument("--anonymous-pull", action="store_true",
                   help="token mode: the token server also gives pull tokens without credentials")
    s.add_argument("--images", help=f"comma-separated subset of: {','.join(ALL_IMAGES)}")
    s.add_argument("--fixtures", default=str(FIXTURES))
    lifetime_opts(s)

    s = sub.add_parser("stop", help="stop what `start` or `proxy` started and remove the workdir")
    s.add_argument("--workdir", required=True)

    s = sub.add_parser("proxy", help="start a fault-injecting proxy; print one JSON line")
    s.add_argument("--workdir", help="a `start` workdir: upstream, TLS files and challenge from there")
    s.add_argument("--upstream", help="127.0.0.1:PORT (default with --workdir: its registry)")
    s.add_argument("--fault", choices=FAULTS, default="none")
    s.add_argument("--every", type=int, default=1, help="fault every Nth eligible request")
    s.add_argument("--first", type=int, default=1, help="the first eligible request to fault (1-based)")
    s.add_argument("--limit", type=int, help="fault at most this many times")
    s.add_argument("--delay-ms", type=int, default=20, help="slow: added latency; stall: silence")
    s.add_argument("--extra-bytes", type=int, default=1000, help="long: bytes beyond the asked range")
    s.add_argument("--match", help="regex: only requests whose path matches are eligible")
    s.add_argument("--plain", action="store_true", help="serve plain HTTP to clients")
    s.add_argument("--ca-file", help="CA to verify a TLS upstream (upstream is TLS when given)")
    s.add_argument("--cert", help="certificate to serve TLS with")
    s.add_argument("--key", help="its key")
    s.add_argument("--upstream-plain", action="store_true", help="talk plain HTTP upstream")
    s.add_argument("--log", help="request log file (default: in the proxy's directory)")
    s.add_argument("--rtt-ms", type=float,
                   help="clients reach the proxy through a link with this round-trip time (link.py)")
    s.add_argument("--rate-mbit", type=float, help="that link's rate cap in Mbit/s (default: none)")
    s.add_argument("--link-only", action="store_true",
                   help="the link relays straight to the registry, without the fault proxy (HTTP/2 by "
                        "ALPN passes; no request log)")
    lifetime_opts(s)

    sub.add_parser("selftest", help="start every mode and fault once against real servers")
    for hidden in ("_serve", "_proxy"):
        s = sub.add_parser(hidden)
        s.add_argument("--workdir", required=True)

    a = ap.parse_args(argv)
    try:
        if a.cmd == "start":
            images = [x for x in a.images.split(",") if x] if a.images else None
            info = start(a.auth, a.tls, a.workdir, a.token_ttl, a.anonymous_pull, images, a.fixtures,
                         a.max_lifetime, a.watch_pid)
            print(json.dumps(info), flush=True)
        elif a.cmd == "stop":
            stopped = stop(a.workdir)
            log(f"stopped {a.workdir}" if stopped else f"{a.workdir}: nothing to stop")
        elif a.cmd == "proxy":
            info = start_proxy(a.workdir, a.upstream, a.fault, a.every, a.first, a.limit, a.delay_ms,
                               a.extra_bytes, a.match, a.plain, a.ca_file, a.cert, a.key,
                               a.upstream_plain, a.log, a.max_lifetime, a.watch_pid,
                               rtt_ms=a.rtt_ms, rate_mbit=a.rate_mbit, link_only=a.link_only)
            print(json.dumps(info), flush=True)
        elif a.cmd == "selftest":
            import selftest
            return selftest.run()
        elif a.cmd == "_serve":
            return serve_main(a.workdir)
        elif a.cmd == "_proxy":
            return proxy_main(a.workdir)
    except HarnessError as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
