"""A fault-injecting reverse proxy for the registry, on 127.0.0.1.

The client talks to the proxy as if it were the registry (same paths, its own Host
header is passed on, so any absolute URL the registry builds points back at the proxy).
By default the proxy terminates TLS with the registry's own certificate (valid for
127.0.0.1) and connects upstream over TLS, so clients use the same CA file for both;
`plain=True` serves plain HTTP instead (for `--insecure` clients).

HTTP/1.1 keep-alive is kept on both sides: one upstream connection per client connection.

Faults (`fault`), applied to the *eligible* requests that the schedule selects:

  fault          eligible requests                 what the client gets
  none           -                                 the registry's answer, unchanged
  reset          all                               TCP reset (RST) instead of an answer
  500            all                               500 with a registry-style JSON error
  slow           all                               the answer, after `delay_ms`
  stall          GET                               headers and half the body, then
                                                   silence for `delay_ms`, then a close
  truncate       GET                               headers (true Content-Length) and half
                                                   the body, then a clean close
  ignore-range   GET with Range                    200 with the whole blob (Range dropped)
  long           GET with one Range a-b or a-      206, `extra` bytes more than asked
                                                   (the blob's next bytes, or zeros past its
                                                   end); Content-Range LIES: it names the
                                                   requested range
  long-honest    same                              same body; Content-Range matches the body
  short          same                              206 with the first half of the asked
                                                   bytes; Content-Range LIES (requested range)
  short-honest   same                              same body; Content-Range matches the body
  expire-token   requests with Authorization       401 with the registry's challenge (Bearer
                                                   realm/service, scope of this repository,
                                                   error="invalid_token"), as when a token
                                                   has expired
  redirect       GET/HEAD of /v2/NAME/blobs/DIGEST  after the registry accepted the request
                                                   (checked with a HEAD upstream), 307 to a
                                                   "blob store": another port of this proxy
                                                   that serves the blob straight from the
                                                   registry's storage, with Range, without
                                                   auth, as cloud storage behind a real
                                                   registry does; the URL carries a signature
                                                   (`?expires=…&sig=…`) that the store checks
                                                   (403 without it). Needs the registry's
                                                   storage directory (`store_dir`).

Schedule: eligible requests are numbered 1, 2, 3, …; number k is faulted when
k >= first and (k - first) % every == 0, at most `limit` times. The defaults (every=1,
first=1) fault every eligible request; `every=2` faults the 1st, 3rd, 5th…, so that
each retry succeeds. `match` (a regex searched in the path) narrows what is eligible,
e.g. "/blobs/".

Every request is logged as one JSON line: n, conn (connection number), server ("proxy",
or "store" for the blob store), time, method, path, range, auth (whether the request
carried an Authorization header), status (an int, or "reset"), fault (the fault applied,
or null), bytes (body bytes sent to the client), ms.
"""

import hashlib
import hmac
import http.client
import http.server
import json
import os
import secrets
import re
import socket
import struct
import threading
import time

from httpserver import LoopbackServer, send_body
from oci import parse_challenge

FAULTS = ["none", "reset", "500", "slow", "stall", "truncate", "ignore-range",
          "long", "long-honest", "short", "short-honest", "expire-token", "redirect"]

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
              "transfer-encoding", "upgrade", "proxy-authorization", "proxy-authenticate"}

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_REPO = re.compile(r"^/v2/(.+?)/(?:manifests|blobs|tags)/")
_BLOB = re.compile(r"^/v2/.+/blobs/sha256:([0-9a-f]{64})$")
_STORE = re.compile(r"^/blobs/sha256/([0-9a-f]{64})$")


class ProxyConfig:
    def __init__(self, upstream_host, upstream_port, fault="none", upstream_ssl_ctx=None,
                 every=1, first=1, limit=None, delay_ms=20, extra=1000, match=None,
                 log_path=None, challenge=None, store_dir=None):
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
        self.upstream = (upstream_host, upstream_port)
        self.upstream_ssl_ctx = upstream_ssl_ctx    # None: plain HTTP upstream
        self.fault, self.every, self.first, self.limit = fault, max(1, every), max(1, first), limit
        self.delay = delay_ms / 1000.0
        self.extra = extra
        self.match = re.compile(match) if match else None
        self.log_path = log_path
        self.challenge = challenge  # fallback for expire-token before any upstream 401 is seen
        self.store_dir = store_dir  # the registry's storage root, for `redirect`
        if fault == "redirect" and not store_dir:
            raise ValueError("the redirect fault needs the registry's storage directory")


class Schedule:
    """Which eligible requests get the fault (thread-safe)."""

    def __init__(self, every, first, limit):
        self.every, self.first, self.limit = every, first, limit
        self.k = 0
        self.hits = 0
        self.lock = threading.Lock()

    def hit(self):
        with self.lock:
            self.k += 1
            if self.k < self.first or (self.k - self.first) % self.every:
                return False
            if self.limit is not None and self.hits >= self.limit:
                return False
            self.hits += 1
            return True


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass  # we keep our own JSON log

    def setup(self):
        super().setup()
        self.upstream_conn = None
        self.conn_id = self.server.next_conn()

    def finish(self):
        try:
            super().finish()
        except (OSError, ValueError):
            pass
        if self.upstream_conn:
            self.upstream_conn.close()

    # Every method goes through the same path.
    def do_GET(self):
        self.handle_request()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    # -- one request --------------------------------------------------------------------

    def handle_request(self):
        cfg = self.server.cfg
        self.t0 = time.monotonic()
        rng = self.headers.get("Range")
        faulted = self.eligible(cfg.fault, rng) and self.server.schedule.hit()
        self.rec = {"n": self.server.next_request(), "conn": self.conn_id, "server": "proxy",
                    "time": time.time(), "method": self.command, "path": self.path, "range": rng,
                    "auth": "Authorization" in self.headers, "status": None,
                    "fault": cfg.fault if faulted else None, "bytes": 0, "ms": None}
        try:
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                return self.simple(501, b'{"error":"chunked request bodies are not supported"}')
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else None
            fault = cfg.fault if faulted else "none"
            if fault == "reset":
                self.reset()
            elif fault == "500":
                self.simple(500, b'{"errors":[{"code":"UNKNOWN","message":"injected fault: 500"}]}')
            elif fault == "expire-token":
                self.simple(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"injected fault: token expired"}]}',
                            [("WWW-Authenticate", self.expired_challenge())])
            elif fault in ("long", "long-honest", "short", "short-honest"):
                self.wrong_length(body, fault)
            elif fault == "redirect":
                self.redirect(body)
            else:
                if fault == "slow":
                    time.sleep(cfg.delay)
                headers = self.forward_headers(drop_range=(fault == "ignore-range"))
                resp = self.upstream(self.command, self.path, headers, body)
                if resp is not None:
                    self.relay(resp, cut=fault if fault in ("stall", "truncate") else None)
        except (OSError, http.client.HTTPException):
            # The client went away mid-answer (or the registry did): this connection and
            # its upstream one are spent, whatever was left unread on them.
            self.close_connection = True
            if self.upstream_conn:
                self.upstream_conn.close()
                self.upstream_conn = None
        finally:
            self.log_request_record()

    def log_request_record(self):
        """Log this request (once): at its end, or before a stall's silence."""
        if self.rec.get("ms") is None:
            self.rec["ms"] = round((time.monotonic() - self.t0) * 1000, 3)
            self.server.log(self.rec)

    def eligible(self, fault, rng):
        cfg = self.server.cfg
        if fault == "none" or (cfg.match and not cfg.match.search(self.path)):
            return False
        if fault in ("reset", "500", "slow"):
            return True
        if fault in ("stall", "truncate"):
            return self.command == "GET"
        if fault == "ignore-range":
            return self.command == "GET" and bool(rng)
        if fault in ("long", "long-honest", "short", "short-honest"):
            return self.command == "GET" and bool(rng and _RANGE.match(rng.strip()))
        if fault == "expire-token":
            return "Authorization" in self.headers
        if fault == "redirect":
            return self.command in ("GET", "HEAD") and bool(_BLOB.match(self.path.split("?")[0]))
        return False

    # -- answering ourselves ------------------------------------------------------------

    def simple(self, status, body, extra=()):
        self.send_response_only(status)
        if send_body(self, body, extra=extra):
            self.rec["bytes"] = len(body)
        self.rec["status"] = status

    def reset(self):
        """Close with SO_LINGER 0, so the kernel sends RST instead of FIN. The file objects
        made from the socket hold references to it: close them first, or nothing closes."""
        self.rec["status"] = "reset"
        self.close_connection = True
        s = self.connection
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        for f in (self.rfile, self.wfile):
            try:
                f.close()
            except OSError:
                pass
        s.close()

    def expired_challenge(self):
        base = self.server.last_challenge or self.server.cfg.challenge
        if not base:
            return 'Bearer realm="unknown",error="invalid_token"'
        scheme, p = parse_challenge(base)
        if scheme != "bearer":
            return base
        parts = [f'realm="{p.get("realm", "")}"', f'service="{p.get("service", "")}"']
        m = _REPO.match(self.path)
        if m:
            parts.append(f'scope="repository:{m.group(1)}:pull"')
        parts.append('error="invalid_token"')
        return "Bearer " + ",".join(parts)

    # -- talking to the registry --------------------------------------------------------

    def forward_headers(self, drop_range=False, range_value=None):
        out = []
        for k, v in self.headers.items():
            kl = k.lower()
            if kl in HOP_BY_HOP or (kl == "range" and (drop_range or range_value)):
                continue
            out.append((k, v))
        if range_value:
            out.append(("Range", range_value))
        return out

    def upstream(self, method, path, headers, body):
        """Send the request upstream (reconnecting once if a kept-alive connection was
        closed by the registry meanwhile). On failure answers 502 and returns None."""
        cfg = self.server.cfg
        for attempt in (1, 2):
            conn = self.upstream_conn
            if conn is None:
                host, port = cfg.upstream
                if cfg.upstream_ssl_ctx:
                    conn = http.client.HTTPSConnection(host, port, context=cfg.upstream_ssl_ctx, timeout=120)
                else:
                    conn = http.client.HTTPConnection(host, port, timeout=120)
            try:
                conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
                for k, v in headers:
                    conn.putheader(k, v)
                conn.endheaders(body)
                resp = conn.getresponse()
                self.upstream_conn = conn
                if resp.status == 401 and resp.getheader("WWW-Authenticate"):
                    self.server.last_challenge = resp.getheader("WWW-Authenticate")
                return resp
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                self.upstream_conn = None
                if attempt == 2:
                    self.simple(502, json.dumps({"error": f"upstream: {e}"}).encode())
                    return None

    def send_upstream_headers(self, resp, status=None, drop=(), extra=()):
        self.send_response_only(status or resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP_BY_HOP and k.lower() not in drop:
                self.send_header(k, v)
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()

    def relay(self, resp, cut=None):
        """Pass the registry's answer on, streaming the body. `cut` ("stall" or
        "truncate") stops after half the body."""
        self.rec["status"] = resp.status
        has_body = self.command != "HEAD" and resp.status not in (204, 304) and resp.status >= 200
        length = resp.getheader("Content-Length")
        if has_body and length is None:
            # Chunked or close-delimited upstream: buffer it and send it with a length.
            data = resp.read()
            self.send_upstream_headers(resp, drop={"content-length"},
                                       extra=[("Content-Length", str(len(data)))])
            self.send_body_from(iter([data]), len(data), cut)
            return
        self.send_upstream_headers(resp)
        if not has_body:
            resp.read()
            return
        total = int(length)

        def chunks():
            while True:
                b = resp.read(65536)
                if not b:
                    return
                yield b
        self.send_body_from(chunks(), total, cut)
        if cut:
            self.upstream_conn.close()  # the rest was not read: this connection is spent
            self.upstream_conn = None

    def send_body_from(self, chunks, total, cut):
        limit = total // 2 if cut else total
        sent = 0
        for b in chunks:
            b = b[:limit - sent]
            self.wfile.write(b)
            sent += len(b)
            self.rec["bytes"] = sent
            if sent >= limit:
                break
        if cut:
            self.close_connection = True
            self.wfile.flush()
            if cut == "stall":
                self.log_request_record()
                time.sleep(self.server.cfg.delay)

    def redirect(self, body):
        """307 to the blob store, if the registry would serve this blob to this client."""
        resp = self.upstream("HEAD", self.path, self.forward_headers(drop_range=True), body)
        if resp is None:
            return
        resp.read()
        if resp.status != 200:
            self.rec["fault"] = None  # refused (401, 404…): pass that on, without a body
            self.rec["status"] = resp.status
            self.send_upstream_headers(resp, drop={"content-length"}, extra=[("Content-Length", "0")])
            return
        hexdigest = _BLOB.match(self.path.split("?")[0]).group(1)
        self.rec["status"] = 307
        self.send_response_only(307)
        self.send_header("Location", self.server.store_url(hexdigest))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def wrong_length(self, body, fault):
        """206 with a longer or shorter body than the Range asked for."""
        cfg = self.server.cfg
        m = _RANGE.match(self.headers["Range"].strip())
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else None
        if fault.startswith("long") and end is not None:
            ask = f"bytes={start}-{end + cfg.extra}"
        else:
            ask = self.headers["Range"].strip()
        resp = self.upstream(self.command, self.path, self.forward_headers(range_value=ask), body)
        if resp is None:
            return
        cr = _CONTENT_RANGE.match(resp.getheader("Content-Range") or "")
        if resp.status != 206 or not cr:
            self.rec["fault"] = None  # nothing to distort: pass the answer on
            return self.relay(resp)
        data = resp.read()
        total = cr.group(3)
        if end is None:  # open-ended: asked up to the blob's end
            end = int(cr.group(2))
        asked = end - start + 1
        if fault.startswith("long"):
            data = data[:asked + cfg.extra]
            if len(data) <= asked:  # at the blob's end: there is nothing real to add
                data += b"\0" * cfg.extra
        else:
            data = data[:asked // 2]
        if fault.endswith("honest"):
            content_range = f"bytes {start}-{start + len(data) - 1}/{total}"
        else:
            content_range = f"bytes {start}-{end}/{total}"
        self.rec["status"] = 206
        self.send_upstream_headers(resp, status=206, drop={"content-length", "content-range"},
                                   extra=[("Content-Range", content_range),
                                          ("Content-Length", str(len(data)))])
        self.wfile.write(data)
        self.rec["bytes"] = len(data)


class StoreHandler(http.server.BaseHTTPRequestHandler):
    """The blob store behind `redirect`: GET/HEAD /blobs/sha256/HEX?expires=…&sig=…,
    served from the registry's storage directory, with single-range support."""
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        proxy = self.server.proxy
        t0 = time.monotonic()
        path, _, query = self.path.partition("?")
        rng = self.headers.get("Range")
        rec = {"n": proxy.next_request(), "conn": None, "server": "store", "time": time.time(),
               "method": self.command, "path": self.path, "range": rng,
               "auth": "Authorization" in self.headers, "status": None, "fault": None, "bytes": 0}
        try:
            status, headers, body = self.answer(path, query, rng)
            rec["status"] = status
            self.send_response_only(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)
                rec["bytes"] = len(body)
        finally:
            rec["ms"] = round((time.monotonic() - t0) * 1000, 3)
            proxy.log(rec)

    do_HEAD = do_GET

    def answer(self, path, query, rng):
        proxy = self.server.proxy
        m = _STORE.match(path)
        if not m:
            return 404, [], b"no such blob\n"
        if not proxy.store_signature_ok(m.group(1), query):
            return 403, [], b"bad or missing signature\n"
        f = os.path.join(proxy.cfg.store_dir, "docker/registry/v2/blobs/sha256", m.group(1)[:2],
                         m.group(1), "data")
        try:
            with open(f, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return 404, [], b"no such blob\n"
        common = [("Content-Type", "application/octet-stream"), ("Accept-Ranges", "bytes"),
                  ("ETag", f'"{m.group(1)}"')]
        if not rng:
            return 200, common, data
        r = _RANGE.match(rng.strip())
        if not r or int(r.group(1)) >= len(data):
            return 416, [("Content-Range", f"bytes */{len(data)}")], b""
        start = int(r.group(1))
        end = min(int(r.group(2)), len(data) - 1) if r.group(2) else len(data) - 1
        return 206, common + [("Content-Range", f"bytes {start}-{end}/{len(data)}")], data[start:end + 1]


class BlobStore(LoopbackServer):
    def __init__(self, proxy, ssl_ctx):
        self.proxy = proxy
        super().__init__(StoreHandler, ssl_ctx)


class FaultProxy(LoopbackServer):
    """The proxy; with `cfg.store_dir`, also the blob store on a second port (`store`)."""

    def __init__(self, cfg: ProxyConfig, ssl_ctx=None, port=0):
        self.cfg = cfg
        self.schedule = Schedule(cfg.every, cfg.first, cfg.limit)
        self.last_challenge = None
        self._lock = threading.Lock()
        self._conns = 0
        self._requests = 0
        self._sig_key = secrets.token_bytes(16)
        super().__init__(ProxyHandler, ssl_ctx, port)
        self.store = BlobStore(self, ssl_ctx) if cfg.store_dir else None
        self.store_scheme = "https" if ssl_ctx else "http"

    def serve_forever(self, poll_interval=0.5):
        if self.store:
            threading.Thread(target=self.store.serve_forever, daemon=True).start()
        super().serve_forever(poll_interval)

    def shutdown(self):
        if self.store:
            self.store.shutdown()
        super().shutdown()

    def store_url(self, hexdigest):
        expires = int(time.time()) + 600
        sig = hmac.new(self._sig_key, f"{hexdigest}:{expires}".encode(), hashlib.sha256).hexdigest()
        return f"{self.store_scheme}://127.0.0.1:{self.store.port}/blobs/sha256/{hexdigest}?expires={expires}&sig={sig}"

    def store_signature_ok(self, hexdigest, query):
        q = dict(p.partition("=")[::2] for p in query.split("&") if p)
        want = hmac.new(self._sig_key, f"{hexdigest}:{q.get('expires')}".encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(want, q.get("sig", "")) and int(q.get("expires") or 0) >= time.time()

    def next_conn(self):
        with self._lock:
            self._conns += 1
            return self._conns

    def next_request(self):
        with self._lock:
            self._requests += 1
            return self._requests

    def log(self, rec):
        if self.cfg.log_path:
            line = json.dumps(rec) + "\n"
            with self._lock, open(self.cfg.log_path, "a") as f:
                f.write(line)


def read_log(path):
    """The proxy's request log as a list of dicts."""
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
