"""The one hasher: every digest the platform records is computed here, files streamed.

Inputs: bytes, a file or a directory. Outputs: hex digests. sha256 identifies content (registry
manifests, checkpoints, candidates, evidence); md5 is only what DVC records, re-checked by lineage.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digests(path: str | Path, algorithms: tuple[str, ...] = ("md5", "sha256")) -> dict[str, str]:
    """Digests of one file, read once in blocks."""
    digests = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            for d in digests.values():
                d.update(block)
    return {name: d.hexdigest() for name, d in digests.items()}


def sha256_file(path: str | Path) -> str:
    return file_digests(path, ("sha256",))["sha256"]


def md5_file(path: str | Path) -> str:
    return file_digests(path, ("md5",))["md5"]


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def tree_sha256(directory: str | Path) -> dict[str, str]:
    """sha256 of every file under a directory, keyed by its relative POSIX path."""
    root = Path(directory)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in _files(root)}


def content_hash(directory: str | Path) -> str:
    """One sha256 over every file of a directory (relative path and bytes), in sorted order."""
    root = Path(directory)
    digest = hashlib.sha256()
    for f in _files(root):
        digest.update(f.relative_to(root).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(BLOCK), b""):
                digest.update(block)
    return digest.hexdigest()


def copy_tree_hashed(src: str | Path, dst: str | Path) -> tuple[str, dict[str, str]]:
    """Copy every file of `src` into the new directory `dst`, each read once: returns the `content_hash`
    and the `tree_sha256` of the bytes written, so that what is checked is what the copy holds."""
    src, dst = Path(src), Path(dst)
    content, files = hashlib.sha256(), {}
    for f in _files(src):
        rel = f.relative_to(src).as_posix()
        content.update(rel.encode() + b"\0")
        digest = hashlib.sha256()
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        with open(f, "rb") as fin, open(dst / rel, "xb") as fout:
            for block in iter(lambda: fin.read(BLOCK), b""):
                digest.update(block)
                content.update(block)
                fout.write(block)
        files[rel] = digest.hexdigest()
    return content.hexdigest(), files
