"""A token server for docker-registry's `auth.token` mode: the Docker token flow.

    GET /token?service=SERVICE&scope=repository:NAME:pull[,push][&scope=…]   (Basic auth)
    -> 200 {"token": JWT, "access_token": JWT, "expires_in": TTL, "issued_at": RFC 3339}

- Credentials: HTTP Basic with the one configured user. Wrong credentials: 401. No
  credentials: 401 with a Basic challenge, unless anonymous pulls are enabled, in which
  case the token grants `pull` only.
- The user is granted pull and push on every repository (and `*` on registry:catalog).
- `service` must be the configured one (400 otherwise); several scopes may be asked, as
  several `scope` parameters or space-separated in one.
- The JWT (RS256, see pki.JwtSigner) has iss, sub, aud (= service), exp, nbf, iat, jti
  and access. docker-registry 2.8 accepts a token up to 60 s past its `exp` (clock-skew
  leeway, registry/auth/token/token.go), so to make a TTL of a few seconds real, `exp`
  is set to issue time + TTL - 60 s: the registry then refuses the token TTL seconds
  after issue, which is also what `expires_in` says.
- Every request is logged as one JSON line (time, user, scopes, status) to `log_path`.
"""

import base64
import datetime
import http.server
import json
import secrets
import threading
import time
import urllib.parse

from httpserver import LoopbackServer, send_body

REGISTRY_LEEWAY = 60  # seconds; docker-registry 2.8's token.Leeway


class TokenConfig:
    def __init__(self, signer, service, issuer, username, password, ttl=300,
                 anonymous_pull=False, log_path=None):
        self.signer, self.service, self.issuer = signer, service, issuer
        self.username, self.password = username, password
        self.ttl, self.anonymous_pull, self.log_path = ttl, anonymous_pull, log_path


def parse_scopes(values):
    """["repository:a/b:pull,push registry:catalog:*"] -> [("repository", "a/b", ["pull","push"]), …]"""
    out = []
    for v in values:
        for s in v.split():
            typ, _, rest = s.partition(":")
            name, _, actions = rest.rpartition(":")
            if typ and name:
                out.append((typ, name, [a for a in actions.split(",") if a]))
    return out


def grant(user, typ, actions):
    """What `user` (None = anonymous) may do: our whole access policy."""
    if typ == "repository":
        allowed = {"pull", "push"} if user else {"pull"}
    elif typ == "registry":
        allowed = {"*"} if user else set()
    else:
        allowed = set()
    return [a for a in actions if a in allowed]


class TokenHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "erofs-test-token/1"

    def log_message(self, fmt, *args):  # quiet: we keep our own JSON log
        pass

    def _reply(self, status, body: bytes, ctype="application/json", extra=()):
        self.send_response(status)
        send_body(self, body, ctype, extra)

    def _log(self, **kw):
        cfg = self.server.cfg
        if cfg.log_path:
            line = json.dumps(dict(time=time.time(), **kw)) + "\n"
            with self.server.log_lock, open(cfg.log_path, "a") as f:
                f.write(line)

    def _user(self):
        """(ok, user): ok is False when credentials were given and are wrong."""
        cfg = self.server.cfg
        h = self.headers.get("Authorization", "")
        if not h.lower().startswith("basic "):
            return True, None
        try:
            u, _, p = base64.b64decode(h[6:].strip()).decode().partition(":")
        except Exception:
            return False, None
        good = secrets.compare_digest(u, cfg.username) and secrets.compare_digest(p, cfg.password)
        return good, (u if good else None)

    def do_GET(self):
        cfg = self.server.cfg
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/token":
            return self._reply(404, b'{"error":"not found"}')
        q = urllib.parse.parse_qs(url.query)
        scopes = parse_scopes(q.get("scope", []))
        ok, user = self._user()
        log = dict(user=user, scopes=q.get("scope", []), service=q.get("service", [None])[0])
        if not ok:
            self._log(status=401, why="bad credentials", **log)
            return self._reply(401, b'{"error":"bad credentials"}',
                               extra=[("WWW-Authenticate", 'Basic realm="erofs-test-token"')])
        if user is None and not cfg.anonymous_pull:
            self._log(status=401, why="credentials required", **log)
            return self._reply(401, b'{"error":"credentials required"}',
                               extra=[("WWW-Authenticate", 'Basic realm="erofs-test-token"')])
        if q.get("service", [None])[0] != cfg.service:
            self._log(status=400, why="unknown service", **log)
            return self._reply(400, b'{"error":"unknown service"}')
        now = int(time.time())
        access = [{"type": t, "name": n, "actions": grant(user, t, a)} for t, n, a in scopes]
        claims = {
            "iss": cfg.issuer, "sub": user or "", "aud": cfg.service,
            "exp": now + cfg.ttl - REGISTRY_LEEWAY, "nbf": now - 1, "iat": now,
            "jti": secrets.token_hex(16), "access": access,
        }
        token = cfg.signer.sign(claims)
        issued = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat().replace("+00:00", "Z")
        body = json.dumps({"token": token, "access_token": token, "expires_in": cfg.ttl,
                           "issued_at": issued}).encode()
        self._log(status=200, access=access, jti=claims["jti"], **log)
        self._reply(200, body)

    do_HEAD = do_GET


class TokenServer(LoopbackServer):
    """The token server on 127.0.0.1 (port 0 = a free one), TLS when `ssl_ctx` is given."""

    def __init__(self, cfg: TokenConfig, ssl_ctx=None, port=0):
        self.cfg, self.log_lock = cfg, threading.Lock()
        super().__init__(TokenHandler, ssl_ctx, port)
