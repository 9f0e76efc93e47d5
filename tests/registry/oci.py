"""A small OCI distribution client over urllib, for the harness (pushing the fixtures) and
for tests written in Python. It follows the registry's `WWW-Authenticate` challenges:
Basic, and Bearer through the token realm (Docker token flow), refreshing a token on 401.
"""

import base64
import hashlib
import json
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])


def sha256_digest(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


_PARAM = re.compile(r'([A-Za-z_]+)=(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


def parse_challenge(value: str):
    """`Bearer realm="…",service="…",scope="…"` -> ("bearer", {"realm": …, …})."""
    scheme, _, rest = value.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _PARAM.finditer(rest)}
    return scheme.lower(), params


def loopback_opener(ctx=None):
    """A urllib opener that ignores http(s)_proxy from the environment (the tests talk to
    127.0.0.1 only) and verifies TLS with `ctx`."""
    handlers = [urllib.request.ProxyHandler({})]
    if ctx:
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
    return urllib.request.build_opener(*handlers)


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {len(self.body)} bytes>"


class Client:
    """Talks to one registry. `base` is like "https://127.0.0.1:5000"."""

    def __init__(self, base, ca_file=None, username=None, password=None, timeout=60):
        self.base = base.rstrip("/")
        self.ctx = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self.opener = loopback_opener(self.ctx)
        self.username, self.password = username, password
        self.timeout = timeout
        self.auth_header = None      # what the last challenge asked for
        self.token_requests = 0      # how many tokens we fetched (tests look at it)

    # -- plumbing -----------------------------------------------------------------------

    def _basic(self):
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def raw(self, method, url, data=None, headers=None, timeout=None):
        """One HTTP exchange, no auth logic. Returns a Response for every HTTP status;
        connection errors raise as urllib does."""
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        try:
            with self.opener.open(req, timeout=timeout or self.timeout) as r:
                return Response(r.status, r.headers, r.read())
        except urllib.error.HTTPError as e:
            return Response(e.code, e.headers, e.read())

    def fetch_token(self, params):
        """The Docker token flow: GET realm?service=…&scope=… with Basic credentials."""
        q = [("service", params.get("service", ""))]
        for s in (params.get("scope") or "").split(" "):
            if s:
                q.append(("scope", s))
        url = params["realm"] + ("&" if "?" in params["realm"] else "?") + urllib.parse.urlencode(q)
        h = {"Authorization": self._basic()} if self.username is not None else {}
        r = self.raw("GET", url, headers=h)
        self.token_requests += 1
        if r.status != 200:
            raise PermissionError(f"token server said {r.status}: {r.body[:200]!r}")
        j = r.json()
        return j.get("token") or j["access_token"]

    def request(self, method, path, data=None, headers=None, timeout=None):
        """A request with auth: tries with what worked last time; on 401 answers the
        challenge (Basic, or a new Bearer token for the challenge's scope) and tries once more."""
        url = path if path.startswith(("http://", "https://")) else self.base + path
        h = dict(headers or {})
        if self.auth_header:
            h["Authorization"] = self.auth_header
        r = self.raw(method, url, data, h, timeout)
        if r.status != 401 or "WWW-Authenticate" not in r.headers:
            return r
        scheme, params = parse_challenge(r.headers["WWW-Authenticate"])
        if scheme == "basic":
            if self.username is None:
                return r
            self.auth_header = self._basic()
        elif scheme == "bearer":
            self.auth_header = "Bearer " + self.fetch_token(params)
        else:
            return r
        h["Authorization"] = self.auth_header
        return self.raw(method, url, data, h, timeout)

    def check(self, r, *ok, what=""):
        if r.status not in ok:
            raise RuntimeError(f"{what}: HTTP {r.status}: {r.body[:300]!r}")
        return r

    # -- distribution API ---------------------------------------------------------------

    def get_manifest(self, repo, ref, accept=MANIFEST_ACCEPT):
        return self.request("GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": accept})

    def get_blob(self, repo, digest, start=None, end=None):
        """GET a blob, or bytes start..end inclusive of it."""
        h = {}
        if start is not None:
            h["Range"] = f"bytes={start}-{'' if end is None else end}"
        return self.request("GET", f"/v2/{repo}/blobs/{digest}", headers=h)

    def push_blob(self, repo, data, mount_from=None):
        """Upload a blob (monolithic POST + PUT), or mount it from another repository of the
        same registry when `mount_from` is given and the registry agrees. Returns its digest."""
        dg = sha256_digest(data)
        q = f"?mount={dg}&from={mount_from}" if mount_from else ""
        r = self.check(self.request("POST", f"/v2/{repo}/blobs/uploads/{q}", b""), 201, 202,
                       what=f"start upload to {repo}")
        if r.status == 201:  # mounted
            return dg
        loc = r.headers["Location"]
        if loc.startswith("/"):
            loc = self.base + loc
        sep = "&" if "?" in loc else "?"
        self.check(self.request("PUT", f"{loc}{sep}digest={dg}", data,
                                {"Content-Type": "application/octet-stream"}), 201,
                   what=f"upload to {repo}")
        return dg

    def push_manifest(self, repo, ref, body: bytes, media_type):
        r = self.check(self.request("PUT", f"/v2/{repo}/manifests/{ref}", body,
                                    {"Content-Type": media_type}), 201,
                       what=f"put manifest {repo}:{ref}")
        dg = sha256_digest(body)
        got = r.headers.get("Docker-Content-Digest")
        if got and got != dg:
            raise RuntimeError(f"registry says manifest digest {got}, we computed {dg}")
        return dg
