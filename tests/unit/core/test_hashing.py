import hashlib

import pytest

from pipelines.core import hashing


@pytest.mark.parametrize("size", [0, 1, hashing.BLOCK - 1, hashing.BLOCK, 3 * hashing.BLOCK + 17])
def test_file_digests_equal_hashlib_over_the_whole_file(tmp_path, size):
    data = bytes(i % 251 for i in range(size))
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert hashing.file_digests(path) == {"md5": hashlib.md5(data).hexdigest(),
                                          "sha256": hashlib.sha256(data).hexdigest()}
    assert hashing.sha256_file(path) == hashing.sha256_bytes(data) == hashlib.sha256(data).hexdigest()
    assert hashing.md5_file(path) == hashlib.md5(data).hexdigest()


def _tree(root, files):
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.mark.parametrize("change", [
    lambda r: (r / "a.txt").write_bytes(b"A"),             # bytes
    lambda r: (r / "a.txt").rename(r / "b.txt"),           # a name
    lambda r: (r / "sub" / "new").write_bytes(b""),        # an empty file added
    lambda r: (r / "sub" / "c.bin").unlink(),              # a file removed
])
def test_content_hash_sees_every_change(tmp_path, change):
    root = _tree(tmp_path, {"a.txt": b"a", "sub/c.bin": b"\0\1"})
    before = hashing.content_hash(root)
    change(root)
    assert hashing.content_hash(root) != before


def test_bytecode_is_not_content(tmp_path):
    root = _tree(tmp_path, {"a.py": b"x = 1"})
    before, tree = hashing.content_hash(root), hashing.tree_sha256(root)
    _tree(root, {"__pycache__/a.cpython-311.pyc": b"\0"})
    assert hashing.content_hash(root) == before and hashing.tree_sha256(root) == tree
    assert tree == {"a.py": hashlib.sha256(b"x = 1").hexdigest()}
