#!/usr/bin/env python3
"""Push a copy of an image with its gzip layers uncompressed (plain tar layers).

    tests/containerd/uncompressed.py REGISTRY(host:port) REPO FROM_TAG TO_TAG [UNUSED_MIB]

The diff_ids do not change (they are the tars' digests), so the layers keep their chain
IDs. With UNUSED_MIB, a top layer holding one file of that many MiB that nothing reads is
added (config and manifest updated): as in the field's cold-start measurements, an image
holds much its workload never touches. Plain HTTP (a test registry on loopback), no auth. Builders
cannot be trusted to do this: buildah's `push --disable-compression` reuses the gzip blobs
it already pushed to the registry.
"""
import gzip
import io
import tarfile
import hashlib
import json
import sys
import urllib.request

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def request(method, url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    return urllib.request.urlopen(req, timeout=60)


def push_blob(base, repo, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    try:
        request("HEAD", f"{base}/v2/{repo}/blobs/{digest}")
        return digest
    except urllib.error.HTTPError:
        pass
    location = request("POST", f"{base}/v2/{repo}/blobs/uploads/").headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    request("PUT", f"{location}{sep}digest={digest}", data,
            {"Content-Type": "application/octet-stream"})
    return digest


def unused_layer(base, repo, size):
    """A plain tar layer with one file of `size` pseudo-random bytes, pushed."""
    data = bytearray()
    seed = hashlib.sha256(b"unused").digest()
    while len(data) < size:
        seed = hashlib.sha256(seed).digest()
        data += seed * 1024
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("opt/unused/blob")
        info.size = size
        info.mtime = 0
        tar.addfile(info, io.BytesIO(bytes(data[:size])))
    blob = buf.getvalue()
    return {"mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": push_blob(base, repo, blob), "size": len(blob)}


def main():
    registry, repo, from_tag, to_tag = sys.argv[1:5]
    base = f"http://{registry}"
    manifest = json.load(request("GET", f"{base}/v2/{repo}/manifests/{from_tag}",
                                 headers={"Accept": OCI_MANIFEST}))
    if manifest.get("mediaType", OCI_MANIFEST) != OCI_MANIFEST:
        sys.exit(f"{repo}:{from_tag}: not an OCI image manifest")
    layers = []
    for layer in manifest["layers"]:
        blob = request("GET", f"{base}/v2/{repo}/blobs/{layer['digest']}").read()
        media_type = layer["mediaType"]
        if media_type.endswith("+gzip"):
            blob = gzip.decompress(blob)
            media_type = media_type[: -len("+gzip")]
        layers.append({"mediaType": media_type, "digest": push_blob(base, repo, blob),
                       "size": len(blob)})
    if len(sys.argv) > 5:
        layers.append(unused_layer(base, repo, int(sys.argv[5]) << 20))
        config = json.loads(request("GET", f"{base}/v2/{repo}/blobs/{manifest['config']['digest']}").read())
        config["rootfs"]["diff_ids"].append(layers[-1]["digest"])
        config.setdefault("history", []).append({"created_by": "uncompressed.py: unused layer"})
        body = json.dumps(config, separators=(",", ":")).encode()
        manifest["config"]["digest"] = push_blob(base, repo, body)
        manifest["config"]["size"] = len(body)
    manifest["layers"] = layers
    body = json.dumps(manifest, separators=(",", ":")).encode()
    request("PUT", f"{base}/v2/{repo}/manifests/{to_tag}", body, {"Content-Type": OCI_MANIFEST})
    print(f"{registry}/{repo}:{to_tag}")


if __name__ == "__main__":
    main()
