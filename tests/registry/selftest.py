"""`harness.py selftest`: the harness checked against the real servers it starts.

Starts each auth mode (TLS), fetches manifests and blob ranges with urllib (through the
token flow in token mode), checks token expiry and both JWT key conventions, runs every
proxy fault, checks the CLI's one-line JSON and that stop/failed starts leave nothing
behind. Prints one line per check and `N passed, N failed` last; returns 1 on failure.
"""

import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import traceback
import urllib.error
from pathlib import Path

import harness
import oci
import pki
from proxy import FAULTS, read_log

HARNESS = str(Path(harness.__file__).resolve())


class Checks:
    def __init__(self):
        self.passed = self.failed = 0

    def run(self, name, fn, *args, **kw):
        t0 = time.monotonic()
        try:
            fn(*args, **kw)
        except Exception as e:  # noqa: BLE001 - a check reports whatever went wrong
            self.failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            tb = traceback.format_exc().strip().splitlines()
            print("     " + "\n     ".join(tb[-6:]), flush=True)
        else:
            self.passed += 1
            print(f"ok   {name} ({time.monotonic() - t0:.2f}s)", flush=True)


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def client_for(info, url=None, **kw):
    return oci.Client(url or info["url"], info["ca_file"], info["username"], info["password"], **kw)


def layer_bytes(img):
    return (Path(img["fixture_dir"]) / harness.SINGLE[img["fixture"]]).read_bytes()


def processes_mentioning(text):
    """pids whose command line contains `text` (to prove nothing was left behind)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if text.encode() in (p / "cmdline").read_bytes():
                    out.append(int(p.name))
            except OSError:
                pass
    return [p for p in out if p != os.getpid()]


# --- registry checks ----------------------------------------------------------------------

def check_v2_challenge(info):
    c = oci.Client(info["url"], info["ca_file"])
    r = c.raw("GET", info["url"] + "/v2/")
    if info["auth"] == "none":
        expect(r.status == 200, f"/v2/ gave {r.status}")
    else:
        expect(r.status == 401, f"/v2/ without credentials gave {r.status}")
        scheme, params = oci.parse_challenge(r.headers["WWW-Authenticate"])
        expect(scheme == ("basic" if info["auth"] == "basic" else "bearer"), f"challenge {scheme}")
        if scheme == "bearer":
            expect(params["realm"] == info["realm"] and params["service"] == info["service"], str(params))


def check_wrong_password(info):
    c = oci.Client(info["url"], info["ca_file"], info["username"], "wrong")
    try:
        r = c.get_manifest("fixtures/basic", "latest")
    except PermissionError:
        return  # token server refused
    expect(r.status == 401, f"wrong password gave {r.status}")


def check_manifests(info):
    c = client_for(info)
    for name, img in info["images"].items():
        r = c.get_manifest(img["repository"], "latest")
        expect(r.status == 200, f"{name}: {r.status}")
        expect(oci.sha256_digest(r.body) == img["manifest_digest"], f"{name}: digest")
        expect(r.headers["Docker-Content-Digest"] == img["manifest_digest"], f"{name}: header digest")
        m = r.json()
        if name == "multi":
            expect(m["mediaType"] == oci.OCI_INDEX, "index media type")
            plats = {e["platform"]["architecture"]: e["platform"] for e in m["manifests"]}
            expect("variant" not in plats["arm64"] and plats["arm"]["variant"] == "v7", str(plats))
            for p, want in img["platforms"].items():
                r2 = c.get_manifest(img["repository"], want["manifest_digest"])
                expect(r2.status == 200 and r2.json()["layers"][0]["digest"] == want["layer_digest"], p)
        else:
            expect([l["digest"] for l in m["layers"]] == [l["digest"] for l in img["layers"]], f"{name}: layers")
            expect(("mediaType" in m) == (name != "nomediatype"), f"{name}: mediaType presence")
        # by digest too
        r = c.get_manifest(img["repository"], img["manifest_digest"])
        expect(r.status == 200 and oci.sha256_digest(r.body) == img["manifest_digest"], f"{name}: by digest")


def check_blob_range(info, url=None):
    img = info["images"]["basic"]
    data = layer_bytes(img)
    c = client_for(info, url)
    r = c.get_blob(img["repository"], img["layer_digest"], 1000, 5095)
    expect(r.status == 206, f"status {r.status}")
    expect(r.body == data[1000:5096], "range bytes differ")
    expect(r.headers["Content-Range"] == f"bytes 1000-5095/{len(data)}", r.headers["Content-Range"])


def check_whole_blob(info):
    img = info["images"]["aufs"]
    r = client_for(info).get_blob(img["repository"], img["layer_digest"])
    expect(r.status == 200 and oci.sha256_digest(r.body) == img["layer_digest"], f"status {r.status}")


def check_token_details(info):
    c = client_for(info)
    r = c.raw("GET", info["url"] + "/v2/fixtures/basic/manifests/latest")
    _, params = oci.parse_challenge(r.headers["WWW-Authenticate"])
    expect(params["scope"] == "repository:fixtures/basic:pull", params)
    auth = base64.b64encode(f"{info['username']}:{info['password']}".encode()).decode()
    r = c.raw("GET", f"{info['realm']}?service={info['service']}&scope=repository:fixtures/basic:pull",
              headers={"Authorization": "Basic " + auth})
    j = r.json()
    expect(r.status == 200 and j["token"] == j["access_token"] and j["expires_in"] == info["token_ttl"], j)
    h, claims = pki.jwt_decode_unverified(j["token"])
    expect(h["alg"] == "RS256" and h["x5c"] and h["kid"], h)
    expect(claims["aud"] == info["service"] and claims["iss"] == info["issuer"], claims)
    expect(claims["access"] == [{"type": "repository", "name": "fixtures/basic", "actions": ["pull"]}], claims)
    # anonymous is refused (no --anonymous-pull)
    r = c.raw("GET", f"{info['realm']}?service={info['service']}&scope=repository:fixtures/basic:pull")
    expect(r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic"), f"anonymous: {r.status}")


def check_jwt_conventions(info):
    """The registry accepts x5c-only and kid-only tokens, and refuses a foreign key."""
    d = Path(info["workdir"])
    signer = pki.JwtSigner(str(d / "token.key"), str(d / "token.crt"))
    now = int(time.time())
    claims = {"iss": info["issuer"], "sub": "tester", "aud": info["service"], "exp": now + 60,
              "nbf": now, "iat": now, "jti": "x",
              "access": [{"type": "repository", "name": "fixtures/basic", "actions": ["pull"]}]}
    c = oci.Client(info["url"], info["ca_file"])
    url = info["url"] + "/v2/fixtures/basic/manifests/latest"
    for x5c, kid in ((True, False), (False, True)):
        tok = signer.sign(claims, x5c=x5c, kid=kid)
        r = c.raw("GET", url, headers={"Authorization": "Bearer " + tok, "Accept": oci.OCI_MANIFEST})
        expect(r.status == 200, f"x5c={x5c} kid={kid}: {r.status}")
    other = Path(info["workdir"]) / "other"
    other.mkdir()
    p = pki.make_pki(other)
    tok = pki.JwtSigner(p["token.key"], p["token.crt"]).sign(claims)
    r = c.raw("GET", url, headers={"Authorization": "Bearer " + tok})
    expect(r.status == 401, f"foreign key: {r.status}")


def check_pull_only_cannot_push(info):
    c = client_for(info)
    tok = c.fetch_token({"realm": info["realm"], "service": info["service"],
                         "scope": "repository:fixtures/basic:pull"})
    r = c.raw("POST", info["url"] + "/v2/fixtures/basic/blobs/uploads/", b"",
              headers={"Authorization": "Bearer " + tok})
    expect(r.status == 401 and "insufficient_scope" in r.headers["WWW-Authenticate"], f"{r.status}")


def check_token_expiry(info):
    """A token is refused token_ttl seconds after issue; the client then refreshes."""
    c = client_for(info)
    img = info["images"]["aufs"]
    expect(c.get_manifest(img["repository"], "latest").status == 200, "first fetch")
    old = c.auth_header
    time.sleep(info["token_ttl"] + 1.5)
    r = c.raw("GET", f"{info['url']}/v2/{img['repository']}/manifests/latest",
              headers={"Authorization": old, "Accept": oci.MANIFEST_ACCEPT})
    expect(r.status == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"], f"old token: {r.status}")
    n = c.token_requests
    expect(c.get_manifest(img["repository"], "latest").status == 200, "after refresh")
    expect(c.token_requests == n + 1 and c.auth_header != old, "no refresh happened")


# --- proxy checks -------------------------------------------------------------------------

def with_proxy(info, fault, fn, **kw):
    pr = harness.start_proxy(workdir=info["workdir"], fault=fault, **kw)
    try:
        # Get a token (or Basic) straight from the registry first, so that the auth dance
        # does not count among the proxied requests; then talk through the proxy.
        c = client_for(info)
        expect(c.get_manifest("fixtures/basic", "latest").status == 200, "priming auth")
        c.base = pr["url"]
        fn(pr, c, read_log_fn(pr))
    finally:
        harness.stop(pr["workdir"])
        expect(not processes_mentioning(pr["workdir"]), "proxy still running after stop")


def read_log_fn(pr):
    """The proxy's log, once it has stopped growing for 100 ms (at most 2 s): the proxy
    logs a request after its answer is sent, so a client may have the answer first."""
    def settled():
        deadline = time.monotonic() + 2.0
        recs = read_log(pr["log"])
        while time.monotonic() < deadline:
            time.sleep(0.1)
            again = read_log(pr["log"])
            if len(again) == len(recs):
                return again
            recs = again
        return recs
    return settled


def proxy_checks(info, t: Checks):
    img = info["images"]["basic"]
    data = layer_bytes(img)
    repo, dg = img["repository"], img["layer_digest"]
    a, b = 1000, 5095  # the range asked in every check below

    def get(c):
        return c.get_blob(repo, dg, a, b)

    def p_none(pr, c, log):
        for _ in range(2):
            r = get(c)
            expect(r.status == 206 and r.body == data[a:b + 1], f"{r.status}")
        recs = [x for x in log() if x["status"] == 206]
        expect(len(recs) == 2 and all(x["range"] == f"bytes={a}-{b}" for x in recs), recs)
        # urllib opens a connection per request; http.client keeps one: so must the proxy.
        host, port = pr["proxy"].split(":")
        conn = http.client.HTTPSConnection(host, int(port), context=c.ctx, timeout=10)
        for _ in range(3):
            conn.request("GET", f"/v2/{repo}/blobs/{dg}", headers={"Authorization": c.auth_header,
                                                                     "Range": f"bytes={a}-{b}"})
            r = conn.getresponse()
            expect(r.status == 206 and r.read() == data[a:b + 1], f"keep-alive {r.status}")
        conn.close()
        conns = {x["conn"] for x in log()[-3:]}
        expect(len(conns) == 1, f"three requests on one connection came as {len(conns)} connections")

    def p_reset(pr, c, log):
        try:
            r = get(c)
            raise AssertionError(f"got an answer: {r.status}")
        except (ConnectionError, urllib.error.URLError, http.client.HTTPException):
            pass
        r = get(c)  # --every 2: the retry works
        expect(r.status == 206 and r.body == data[a:b + 1], f"retry {r.status}")
        expect([x["status"] for x in log() if "/blobs/" in x["path"]] == ["reset", 206], log())

    def p_rst(pr, c, log):
        # Python's ssl reports a reset under TLS as a plain EOF, so look at the TCP stream
        # itself: after the TLS session tickets, the read must fail with ECONNRESET.
        host, port = pr["proxy"].split(":")
        with socket.create_connection((host, int(port))) as s:
            with c.ctx.wrap_socket(s, server_hostname=host) as tls:
                tls.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
                time.sleep(0.3)
                with socket.socket(fileno=os.dup(tls.fileno())) as raw:
                    raw.settimeout(5)
                    try:
                        while raw.recv(65536):
                            pass
                        raise AssertionError("clean close (FIN), not a reset")
                    except ConnectionResetError:
                        pass

    def p_500(pr, c, log):
        expect(get(c).status == 500, "no 500")
        r = get(c)
        expect(r.status == 206 and r.body == data[a:b + 1], f"retry {r.status}")

    def p_long(honest):
        def f(pr, c, log):
            r = get(c)
            n = b - a + 1 + 1000
            expect(r.status == 206 and len(r.body) == n and r.body == data[a:a + n], f"{r.status} {len(r.body)}")
            want = f"bytes {a}-{a + n - 1 if honest else b}/{len(data)}"
            expect(r.headers["Content-Range"] == want, r.headers["Content-Range"])
            # at the blob's end there is nothing real to add: zeros
            r = c.get_blob(repo, dg, len(data) - 10, len(data) - 1)
            expect(len(r.body) == 1010 and r.body[:10] == data[-10:] and r.body[10:] == bytes(1000), "end")
        return f

    def p_short(honest):
        def f(pr, c, log):
            r = get(c)
            n = (b - a + 1) // 2
            expect(r.status == 206 and r.body == data[a:a + n], f"{r.status} {len(r.body)}")
            want = f"bytes {a}-{a + n - 1 if honest else b}/{len(data)}"
            expect(r.headers["Content-Range"] == want, r.headers["Content-Range"])
        return f

    def p_ignore(pr, c, log):
        r = get(c)
        expect(r.status == 200 and len(r.body) == len(data) and "Content-Range" not in r.headers, f"{r.status}")
        expect(oci.sha256_digest(r.body) == dg, "whole blob digest")

    def p_slow(pr, c, log):
        t0 = time.monotonic()
        r = get(c)
        dt = time.monotonic() - t0
        expect(r.status == 206 and r.body == data[a:b + 1] and dt >= 0.3, f"{r.status} {dt:.3f}s")
        expect(all(x["ms"] >= 300 for x in log()), "log ms")

    def p_stall(pr, c, log):
        t0 = time.monotonic()
        try:
            r = c.get_blob(repo, dg, 0, 999_999)
            raise AssertionError(f"got a whole answer: {r.status} {len(r.body)}")
        except (TimeoutError, socket.timeout, urllib.error.URLError):
            pass
        expect(time.monotonic() - t0 < 3, "the client's 1 s timeout did not fire")
        expect([x["bytes"] for x in log()] == [500_000], log())

    def p_truncate(pr, c, log):
        try:
            r = c.get_blob(repo, dg, 0, 999_999)
            raise AssertionError(f"got a whole answer: {r.status} {len(r.body)}")
        except http.client.IncompleteRead as e:
            expect(len(e.partial) == 500_000, f"partial {len(e.partial)}")

    def p_expire(pr, c, log):
        r = c.get_manifest(repo, "latest")  # no token yet: first try unauthorized, then token
        expect(r.status == 200, f"first {r.status}")
        before = c.token_requests
        # next authorized request is the 2nd eligible: fine; the 3rd gets the 401...
        expect(c.get_manifest(repo, "latest").status == 200, "second")
        r = c.raw("GET", f"{pr['url']}/v2/{repo}/manifests/latest", headers={"Authorization": c.auth_header})
        expect(r.status == 401, f"third {r.status}")
        scheme, params = oci.parse_challenge(r.headers["WWW-Authenticate"])
        expect(scheme == "bearer" and params["realm"] == info["realm"] and params.get("error") == "invalid_token"
               and params["scope"] == f"repository:{repo}:pull", params)
        # 4th: not faulted; 5th: faulted, and a client that refreshes its token gets through (6th)
        expect(c.get_manifest(repo, "latest").status == 200, "fourth")
        expect(c.get_manifest(repo, "latest").status == 200, "fifth, after a refresh")
        expect(c.token_requests == before + 1, f"token requests {before} -> {c.token_requests}")
        faulted = [x["n"] for x in log() if x["fault"]]
        expect(len(faulted) == 2, f"faulted requests {faulted}")

    def p_redirect(pr, c, log):
        host, port = pr["proxy"].split(":")
        conn = http.client.HTTPSConnection(host, int(port), context=c.ctx, timeout=10)
        conn.request("GET", f"/v2/{repo}/blobs/{dg}", headers={"Range": f"bytes={a}-{b}"})
        r = conn.getresponse()
        r.read()
        expect(r.status == 401, f"no credentials: {r.status}, should not redirect")
        conn.request("GET", f"/v2/{repo}/blobs/{dg}", headers={"Authorization": c.auth_header,
                                                                 "Range": f"bytes={a}-{b}"})
        r = conn.getresponse()
        r.read()
        loc = r.getheader("Location") or ""
        expect(r.status == 307 and loc.startswith(f"https://{pr['store']}/blobs/sha256/"), f"{r.status} {loc}")
        plain = oci.Client("https://unused", info["ca_file"])
        r = plain.raw("GET", loc, headers={"Range": f"bytes={a}-{b}"})
        expect(r.status == 206 and r.body == data[a:b + 1], f"store {r.status}")
        expect(r.headers["Content-Range"] == f"bytes {a}-{b}/{len(data)}", r.headers["Content-Range"])
        r = plain.raw("GET", loc)
        expect(r.status == 200 and oci.sha256_digest(r.body) == dg, f"store whole {r.status}")
        r = plain.raw("GET", loc.split("?")[0])
        expect(r.status == 403, f"unsigned {r.status}")
        store = [x for x in log() if x["server"] == "store"]
        expect([x["status"] for x in store] == [206, 200, 403] and not any(x["auth"] for x in store), store)

    def p_plain(pr, c, log):
        expect(pr["url"].startswith("http://") and pr["tls"] is False, pr)
        r = get(c)
        expect(r.status == 206 and r.body == data[a:b + 1], f"{r.status}")

    blobs = {"match": "/blobs/"}
    t.run("proxy none: passes bytes, logs, keeps connections alive", with_proxy, info, "none", p_none)
    t.run("proxy reset (--every 2): RST, then the retry works", with_proxy, info, "reset", p_reset, every=2, **blobs)
    t.run("proxy 500 (--every 2): 500, then the retry works", with_proxy, info, "500", p_500, every=2, **blobs)
    t.run("proxy long: 206 longer than asked, Content-Range lies", with_proxy, info, "long", p_long(False))
    t.run("proxy long-honest: Content-Range matches the longer body", with_proxy, info, "long-honest", p_long(True))
    t.run("proxy short: 206 shorter than asked, Content-Range lies", with_proxy, info, "short", p_short(False))
    t.run("proxy short-honest", with_proxy, info, "short-honest", p_short(True))
    t.run("proxy ignore-range: 200 with the whole blob", with_proxy, info, "ignore-range", p_ignore)
    t.run("proxy slow: 300 ms per request", with_proxy, info, "slow", p_slow, delay_ms=300)
    t.run("proxy stall: half a body then silence", lambda: with_proxy(
        info, "stall", lambda pr, c, log: (setattr(c, "timeout", 1), p_stall(pr, c, log)),
        delay_ms=5000, **blobs))
    t.run("proxy reset is a real RST", with_proxy, info, "reset", p_rst)
    t.run("proxy truncate: half a body then close", with_proxy, info, "truncate", p_truncate, **blobs)
    t.run("proxy expire-token (--every 2 --first 3)", with_proxy, info, "expire-token", p_expire, every=2, first=3)
    t.run("proxy redirect: 307 to a blob store, which serves ranges", with_proxy, info, "redirect", p_redirect)
    t.run("proxy --plain: plain HTTP to the client, TLS upstream", with_proxy, info, "none", p_plain, plain=True)
    tested = {"none", "reset", "500", "long", "long-honest", "short", "short-honest",
              "ignore-range", "slow", "stall", "truncate", "expire-token", "redirect"}
    t.run("proxy: every fault has a check", lambda: expect(set(FAULTS) <= tested, set(FAULTS) - tested))


# --- CLI and cleanup ------------------------------------------------------------------------

def cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, HARNESS, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def check_cli_round_trip(tmp):
    """`start` returns (does not hold its stdout open) with one JSON line; `proxy` too;
    `stop` stops all of it and may be repeated."""
    wd = str(tmp / "cli")
    r = cli("start", "--auth", "basic", "--tls", "--workdir", wd, "--images", "aufs,plain-tar")
    expect(r.returncode == 0, r.stderr)
    lines = r.stdout.splitlines()
    expect(len(lines) == 1, f"stdout has {len(lines)} lines")
    info = json.loads(lines[0])
    expect(set(info["images"]) == {"aufs", "plain-tar"} and info["images"]["plain-tar"]["media_type"]
           == oci.OCI_LAYER_TAR, info["images"].keys())
    expect(client_for(info).get_manifest("fixtures/aufs", "latest").status == 200, "registry not serving")
    r = cli("proxy", "--workdir", wd, "--fault", "500", "--match", "/blobs/")
    expect(r.returncode == 0 and len(r.stdout.splitlines()) == 1, r.stderr)
    pr = json.loads(r.stdout)
    img = info["images"]["aufs"]
    expect(client_for(info, pr["url"]).get_blob(img["repository"], img["layer_digest"], 0, 9).status == 500, "proxy")
    # a standalone proxy (no --workdir): upstream and TLS files given explicitly
    r = cli("proxy", "--upstream", info["registry"], "--ca-file", info["ca_file"], "--cert", info["cert_file"],
            "--key", info["key_file"], "--fault", "short")
    expect(r.returncode == 0, r.stderr)
    solo = json.loads(r.stdout)
    r2 = client_for(info, solo["url"]).get_blob(img["repository"], img["layer_digest"], 0, 9)
    expect(r2.status == 206 and len(r2.body) == 5, f"standalone proxy: {r2.status} {len(r2.body)}")
    expect(cli("stop", "--workdir", solo["workdir"]).returncode == 0, "stop standalone proxy")
    expect(not processes_mentioning(solo["workdir"]) and not Path(solo["workdir"]).exists(), "standalone left")
    expect(processes_mentioning(wd), "nothing running?")
    r = cli("stop", "--workdir", wd)
    expect(r.returncode == 0, r.stderr)
    expect(not Path(wd).exists(), "workdir still there")
    expect(not processes_mentioning(wd), f"left running: {processes_mentioning(wd)}")
    r = cli("stop", "--workdir", wd)
    expect(r.returncode == 0, "second stop: " + r.stderr)


def check_failed_start_cleans_up(tmp):
    wd = str(tmp / "fail")
    env = dict(os.environ, HARNESS_FAIL_AFTER_SERVERS="1")
    r = cli("start", "--auth", "token", "--tls", "--workdir", wd, env=env)
    expect(r.returncode == 1 and "failing on purpose" in r.stderr and r.stdout == "", r.stderr)
    expect(not Path(wd).exists(), "workdir left behind")
    expect(not processes_mentioning(wd), f"left running: {processes_mentioning(wd)}")


def check_watch_pid(tmp):
    wd = str(tmp / "watch")
    sleeper = subprocess.Popen(["sleep", "3"])
    try:
        harness.start(auth="none", tls=True, workdir=wd, images=["aufs"], watch_pid=sleeper.pid)
        expect(processes_mentioning(wd), "nothing running?")
        sleeper.wait()
        deadline = time.monotonic() + 10
        while processes_mentioning(wd) and time.monotonic() < deadline:
            time.sleep(0.2)
        expect(not processes_mentioning(wd), "servers outlived the watched process")
    finally:
        sleeper.kill()
        harness.stop(wd)


def check_plain_http_anonymous(tmp):
    """Without --tls: plain HTTP registry and token realm; --anonymous-pull gives pull
    tokens without credentials (and nothing more); a proxy in front speaks plain HTTP."""
    info = harness.start(auth="token", tls=False, workdir=str(tmp / "plain"), anonymous_pull=True,
                         images=["aufs"])
    try:
        expect(info["url"].startswith("http://") and info["realm"].startswith("http://")
               and info["ca_file"] is None, info["url"])
        anon = oci.Client(info["url"])
        img = info["images"]["aufs"]
        expect(anon.get_manifest(img["repository"], "latest").status == 200, "anonymous pull")
        r = anon.request("POST", f"/v2/{img['repository']}/blobs/uploads/", b"")
        expect(r.status == 401, f"anonymous push: {r.status}")
        pr = harness.start_proxy(workdir=info["workdir"], fault="none")
        expect(pr["url"].startswith("http://"), pr["url"])
        anon.base = pr["url"]
        r = anon.get_blob(img["repository"], img["layer_digest"], 10, 19)
        data = (Path(img["fixture_dir"]) / "layer.tar.gz").read_bytes()
        expect(r.status == 206 and r.body == data[10:20], f"through proxy: {r.status}")
    finally:
        harness.stop(info["workdir"])


def check_refuses_foreign_dir(tmp):
    d = tmp / "foreign"
    d.mkdir()
    (d / "precious").write_text("x")
    try:
        harness.stop(d)
        raise AssertionError("stop removed a directory it did not make")
    except harness.HarnessError:
        pass
    expect((d / "precious").exists(), "file gone")


# --- main -----------------------------------------------------------------------------------

def run():
    import tempfile
    t = Checks()
    tmp = Path(tempfile.mkdtemp(prefix="erofs-harness-selftest-"))
    started = []
    try:
        for auth in ("none", "basic", "token"):
            info = None

            def start_it():
                nonlocal info
                info = harness.start(auth=auth, tls=True, workdir=str(tmp / auth),
                                     token_ttl=3 if auth == "token" else 300)
                started.append(info["workdir"])
            t.run(f"[{auth}] start (TLS, all images)", start_it)
            if not info:
                continue
            t.run(f"[{auth}] /v2/ challenge", check_v2_challenge, info)
            if auth != "none":
                t.run(f"[{auth}] wrong password refused", check_wrong_password, info)
            t.run(f"[{auth}] every manifest by tag and digest", check_manifests, info)
            t.run(f"[{auth}] blob range", check_blob_range, info)
            t.run(f"[{auth}] whole blob", check_whole_blob, info)
            if auth == "token":
                t.run("[token] token server answers and JWT contents", check_token_details, info)
                t.run("[token] registry accepts x5c-only and kid-only, refuses a foreign key",
                      check_jwt_conventions, info)
                t.run("[token] pull-only token cannot push", check_pull_only_cannot_push, info)
                t.run("[token] token expires after --token-ttl, client refreshes", check_token_expiry, info)
                proxy_checks(info, t)
            if auth == "basic":
                t.run("[basic] proxy none with Basic auth", with_proxy, info, "none",
                      lambda pr, c, log: check_blob_range(info, pr["url"]))
            t.run(f"[{auth}] stop", lambda: (harness.stop(info["workdir"]),
                                             expect(not processes_mentioning(info["workdir"]), "left running")))
        t.run("CLI start/proxy/stop round trip, stop twice", check_cli_round_trip, tmp)
        t.run("a start failing part way cleans up", check_failed_start_cleans_up, tmp)
        t.run("--watch-pid: servers end with the watched process", check_watch_pid, tmp)
        t.run("plain HTTP (no --tls), token auth with --anonymous-pull", check_plain_http_anonymous, tmp)
        t.run("stop refuses a directory it did not make", check_refuses_foreign_dir, tmp)
    finally:
        for wd in started:
            try:
                harness.stop(wd)
            except Exception:  # noqa: BLE001
                pass
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{t.passed} passed, {t.failed} failed", flush=True)
    return 1 if t.failed else 0
