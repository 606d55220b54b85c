#!/usr/bin/env python3
"""Writes blob-v1-extra.json: more blob format v1 vectors, made independently of the Rust
codec (Python `cryptography`: HKDF-SHA256, AESGCM), in the schema of blob-v1.json.

Adds what the reference set lacks: the largest names, k = 13 and k = 24, exact multiples,
many segments, and tampers a sloppy implementation would accept (a final segment sealed
without the last flag, a segment sealed under the wrong index) or misreport (scheme,
exponent too small, a bad character in a name, a swapped namespace, an empty file).

Run from this directory: python3 make_extra_vectors.py  (salts are fixed, so the output is
reproducible; the Rust test `vectors.rs` checks it).
"""
import hashlib
import json

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY = bytes(range(32))


def plaintext(n):
    return bytes((i * 7 + 3) % 251 for i in range(n))


def header(k, salt, size, ns, bid, scheme=1):
    return (bytes([0x13, 0x37, 1, scheme, 4, k]) + salt + size.to_bytes(8, "big")
            + bytes([len(ns)]) + ns.encode() + bytes([len(bid)]) + bid.encode())


def segments(k, size):
    seg = 1 << k
    count = max(1, -(-size // seg))
    return [(i * seg, min(size, (i + 1) * seg)) for i in range(count)]


def seal(k, salt, plain, ns, bid, last_flag=True, index_of=lambda i: i):
    hdr = header(k, salt, len(plain), ns, bid)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"blobsync v1 blob").derive(KEY)
    aead = AESGCM(key)
    segs = segments(k, len(plain))
    out = bytearray(hdr)
    for i, (a, b) in enumerate(segs):
        last = i == len(segs) - 1 and last_flag
        nonce = index_of(i).to_bytes(11, "big") + bytes([1 if last else 0])
        out += aead.encrypt(nonce, plain[a:b], hdr)
    return hdr, bytes(out)


def salt_for(name):
    return hashlib.sha256(b"blobsync extra vector " + name.encode()).digest()


valid = []
for name, ns, bid, k, n in [
    ("max-length-names", "N" * 128, "i" * 128, 12, 5000),
    ("k13-two-full-segments", "default", "vec-k13", 13, 16384),
    ("k24-single-segment", "default", "vec-k24", 24, 100),
    ("two-full-segments", "photos", "vec-two-full", 12, 8192),
    ("many-segments", "default", "vec-many", 12, 12 * 4096 + 1),
    ("default-k-one-byte", "MX", "vec-default-k-one-byte", 16, 1),
]:
    salt = salt_for(name)
    p = plaintext(n)
    _, stored = seal(k, salt, p, ns, bid)
    valid.append({
        "name": name, "namespace": ns, "id": bid, "k": k, "salt_hex": salt.hex(),
        "plaintext_len": n, "plaintext": "bytes (i*7+3) % 251 for i in 0..len",
        "plaintext_sha256": hashlib.sha256(p).hexdigest(),
        "stored_hex": stored.hex(), "stored_sha256": hashlib.sha256(stored).hexdigest(),
    })

base_salt = salt_for("tamper-base")
base_plain = plaintext(10000)
hdr, base = seal(12, base_salt, base_plain, "photos", "vec-tamper")
invalid = []


def bad(name, stored, why, ns="photos", bid="vec-tamper"):
    invalid.append({"name": name, "namespace": ns, "id": bid, "stored_hex": stored.hex(),
                    "fails_because": why})


_, no_last = seal(12, base_salt, base_plain, "photos", "vec-tamper", last_flag=False)
bad("final-segment-without-last-flag", no_last, "tag")
_, wrong_index = seal(12, base_salt, base_plain, "photos", "vec-tamper",
                      index_of=lambda i: 0 if i == 1 else i)
bad("segment-1-sealed-as-index-0", wrong_index, "tag")
bad("asked-under-another-namespace", base, "namespace", ns="other")
bad("unknown-scheme", base[:3] + bytes([2]) + base[4:], "scheme")
bad("exponent-too-small", base[:5] + bytes([11]) + base[6:], "exponent")
ns_at = 46 + 1
bad("slash-in-namespace", base[:ns_at] + b"/" + base[ns_at + 1:], "header")
bad("zero-length-id", base[:ns_at + 6] + bytes([0]) + base[ns_at + 7:], "header")
size_at = 38
bad("size-field-changed", base[:size_at] + (9999).to_bytes(8, "big") + base[size_at + 8:], "tag")
bad("header-only", hdr, "truncated")
bad("empty-file", b"", "truncated")
bad("cut-inside-header", base[:30], "truncated")

doc = {
    "format": "blobsync blob format v1 (DESIGN.md): extra vectors",
    "made_with": "shared/tests/vectors/make_extra_vectors.py (Python `cryptography`: AESGCM, HKDF-SHA256), independent of the Rust codec",
    "storage_key_hex": KEY.hex(),
    "valid": valid,
    "invalid": invalid,
}
with open("blob-v1-extra.json", "w") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")
print(f"{len(valid)} valid, {len(invalid)} invalid")
