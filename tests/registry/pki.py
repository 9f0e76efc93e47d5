"""Test PKI for the registry harness: a throw-away CA, a TLS server certificate for
127.0.0.1, and an RSA key + certificate that signs registry tokens (RS256 JWTs).

Everything is made with the `openssl` command line tool (Debian's openssl 3.0); the JWT
signature is computed here in plain Python (RSASSA-PKCS1-v1_5 with SHA-256), so no
Python package beyond the standard library is needed.
"""

import base64
import hashlib
import json
import os
import secrets
import subprocess
from pathlib import Path

# An openssl config of our own, so that the extensions are exactly these (Debian's default
# openssl.cnf adds its own v3_ca section to `req -x509`). Certificates follow what strict
# verifiers (Go crypto/x509, rustls/webpki) want: a CA with basicConstraints CA:TRUE, a leaf
# with CA:FALSE, serverAuth and an IP subjectAltName.
OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = $ENV::HARNESS_CN

[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[v3_signer]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
subjectKeyIdentifier = hash
"""

DAYS = "30"


def _openssl(*args, cn="erofs-wasm test"):
    env = dict(os.environ, HARNESS_CN=cn)
    r = subprocess.run(["openssl", *args], env=env, capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {r.stderr.decode(errors='replace')}")
    return r.stdout


def _serial():
    # A positive serial of at most 20 bytes (RFC 5280): 127 random bits, never zero.
    return hex(secrets.randbits(127) | 1)


def make_pki(d: Path):
    """Write into directory `d`:
      ca.crt / ca.key          the test CA (EC P-256), the file clients pass as --ca-file
      server.crt / server.key  TLS certificate for 127.0.0.1 and localhost, signed by the CA
      token.crt / token.key    RSA-2048 self-signed certificate whose key signs JWTs; it is
                               also the registry's auth.token.rootcertbundle
    Returns a dict of the paths (strings)."""
    d = Path(d)
    cnf = d / "openssl.cnf"
    cnf.write_text(OPENSSL_CNF)
    p = {k: str(d / k) for k in ("ca.crt", "ca.key", "server.crt", "server.key", "server.csr",
                                 "token.crt", "token.key")}
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    _openssl("req", "-x509", "-config", str(cnf), *ec, "-nodes", "-keyout", p["ca.key"],
             "-out", p["ca.crt"], "-days", DAYS, "-set_serial", _serial(), "-extensions", "v3_ca",
             cn="erofs-wasm test CA")
    _openssl("req", "-new", "-config", str(cnf), *ec, "-nodes", "-keyout", p["server.key"],
             "-out", p["server.csr"], cn="127.0.0.1")
    _openssl("x509", "-req", "-in", p["server.csr"], "-CA", p["ca.crt"], "-CAkey", p["ca.key"],
             "-set_serial", _serial(), "-days", DAYS, "-extfile", str(cnf), "-extensions", "v3_server",
             "-out", p["server.crt"])
    _openssl("req", "-x509", "-config", str(cnf), "-newkey", "rsa:2048", "-nodes",
             "-keyout", p["token.key"], "-out", p["token.crt"], "-days", DAYS,
             "-set_serial", _serial(), "-extensions", "v3_signer", cn="erofs-wasm test token signer")
    os.unlink(p.pop("server.csr"))
    for k in ("ca.key", "server.key", "token.key"):
        os.chmod(p[k], 0o600)
    return p


# --- a minimal DER reader, enough for an RSAPrivateKey (PKCS#1) ---------------------------

def _der_items(b: bytes):
    """Yield (tag, content) for each TLV in `b`."""
    i = 0
    while i < len(b):
        tag = b[i]
        n = b[i + 1]
        i += 2
        if n & 0x80:  # long form length
            k = n & 0x7F
            n = int.from_bytes(b[i:i + k], "big")
            i += k
        yield tag, b[i:i + n]
        i += n


def _rsa_private_numbers(key_pem_path):
    """(n, e, d, p, q, dp, dq, qinv) of an RSA private key file."""
    der = _openssl("rsa", "-in", key_pem_path, "-outform", "DER", "-traditional")
    (tag, seq), = list(_der_items(der))
    assert tag == 0x30, "RSAPrivateKey is not a SEQUENCE"
    ints = [int.from_bytes(v, "big") for t, v in _der_items(seq) if t == 0x02]
    version, n, e, d, p, q, dp, dq, qinv = ints[:9]
    assert version == 0, "multi-prime RSA keys are not supported"
    return n, e, d, p, q, dp, dq, qinv


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def libtrust_key_id(spki_der: bytes) -> str:
    """The key ID docker/libtrust (and so docker-registry 2.x) computes for a public key:
    SHA-256 of the DER SubjectPublicKeyInfo, first 240 bits, base32, in groups of 4 joined by ':'."""
    s = base64.b32encode(hashlib.sha256(spki_der).digest()[:30]).decode().rstrip("=")
    return ":".join(s[i:i + 4] for i in range(0, len(s), 4))


# DER prefix of a DigestInfo for SHA-256 (RFC 8017, section 9.2, note 1).
_SHA256_DIGESTINFO = bytes.fromhex("3031300d060960864801650304020105000420")


class JwtSigner:
    """Signs JWTs with RS256 using the token key. The header carries both conventions that
    docker-registry 2.8 understands (it tries them in this order):
      x5c: [the signing certificate, base64 DER]; verified against auth.token.rootcertbundle
           (the certificate is self-signed and is itself in the bundle);
      kid: the libtrust key ID of that certificate's key, looked up among the bundle's keys."""

    def __init__(self, key_path, cert_path):
        self.n, self.e, self.d, self.p, self.q, self.dp, self.dq, self.qinv = _rsa_private_numbers(key_path)
        self.k = (self.n.bit_length() + 7) // 8
        cert_der = _openssl("x509", "-in", cert_path, "-outform", "DER")
        spki = _openssl("pkey", "-in", key_path, "-pubout", "-outform", "DER")
        self.x5c = [base64.b64encode(cert_der).decode()]
        self.kid = libtrust_key_id(spki)

    def _sign(self, msg: bytes) -> bytes:
        # EMSA-PKCS1-v1_5 encoding, then the RSA private operation with the CRT.
        t = _SHA256_DIGESTINFO + hashlib.sha256(msg).digest()
        em = b"\x00\x01" + b"\xff" * (self.k - len(t) - 3) + b"\x00" + t
        m = int.from_bytes(em, "big")
        m1 = pow(m, self.dp, self.p)
        m2 = pow(m, self.dq, self.q)
        h = (self.qinv * (m1 - m2)) % self.p
        s = m2 + h * self.q
        assert pow(s, self.e, self.n) == m, "RSA signature self-check failed"
        return s.to_bytes(self.k, "big")

    def sign(self, claims: dict, x5c=True, kid=True) -> str:
        header = {"typ": "JWT", "alg": "RS256"}
        if kid:
            header["kid"] = self.kid
        if x5c:
            header["x5c"] = self.x5c
        signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                         b64url(json.dumps(claims, separators=(",", ":")).encode()))
        return signing_input + "." + b64url(self._sign(signing_input.encode()))


def jwt_decode_unverified(token: str):
    """(header, claims) of a JWT, without checking it: for tests that look inside."""
    def part(s):
        return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
    h, c, _ = token.split(".")
    return part(h), part(c)
