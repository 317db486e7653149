import json
import os

import pandas as pd
import pytest

from pipelines.core.dataio import atomic_dir, atomic_write_text, dataset_fingerprint, read_dataset
from pipelines.core.errors import InputError


def test_reads_each_format_with_provenance(tmp_path):
    frame = pd.DataFrame({"text": ["a b", "c"], "label": ["x", "y"]})
    (tmp_path / "d").mkdir()
    frame.to_csv(tmp_path / "d" / "1.csv", index=False)
    (tmp_path / "d" / "2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")))
    frame.to_parquet(tmp_path / "d" / "3.parquet", index=False)
    (tmp_path / "d" / ".hidden.csv").write_text("junk")
    out = read_dataset(tmp_path / "d")
    assert len(out) == 6
    assert out["_source"].tolist() == ["1.csv"] * 2 + ["2.jsonl"] * 2 + ["3.parquet"] * 2
    assert out["_row"].tolist() == [1, 2, 1, 2, 1, 2]
    assert out["text"].tolist() == ["a b", "c"] * 3


def test_csv_empty_field_is_null_but_words_like_NA_are_text(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("text,label\n,a\nNA,None\n")
    out = read_dataset(f)
    assert pd.isna(out["text"].iat[0]) and out["text"].iat[1] == "NA" and out["label"].iat[1] == "None"


def test_utf8_bom_is_accepted(tmp_path):
    f = tmp_path / "x.csv"
    f.write_bytes(b"\xef\xbb\xbftext,label\nhi,a\n")
    assert list(read_dataset(f).columns[:2]) == ["text", "label"]


def test_directory_drops_must_share_a_schema(tmp_path):
    (tmp_path / "a.csv").write_text("text,label\nhi,a\n")
    (tmp_path / "b.csv").write_text("body,label\nhi,a\n")
    with pytest.raises(InputError, match="every drop of a dataset must share one schema"):
        read_dataset(tmp_path)


def test_fingerprint_has_md5_and_sha256_per_file(tmp_path):
    (tmp_path / "a.csv").write_text("text,label\nhi,a\n")
    fp = dataset_fingerprint(tmp_path)
    assert set(fp) == {"a.csv"} and len(fp["a.csv"]["md5"]) == 32 and len(fp["a.csv"]["sha256"]) == 64


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    target.write_text("old")

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def _names(path):
    return sorted(p.name for p in path.iterdir() if p.name != ".pipelines-output")


def test_atomic_dir_replaces_whole_or_nothing(tmp_path):
    out = tmp_path / "prepared"
    with atomic_dir(out, owner="prepare") as tmp:
        (tmp / "a").write_text("1")
    assert (out / "a").read_text() == "1"
    assert (out / ".pipelines-output").read_text() == "prepare\n"
    with pytest.raises(RuntimeError):
        with atomic_dir(out, owner="prepare") as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("crash mid-write")
    assert _names(out) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]
    with atomic_dir(out, owner="prepare") as tmp:
        (tmp / "c").write_text("3")
    assert _names(out) == ["c"]
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)


@pytest.mark.parametrize("existing, owner, refused", [
    ("absent", "prepare", False),
    ("empty", "prepare", False),
    ("empty-folders", "prepare", False),        # the parents DVC makes for declared outs (dvc exp workspaces)
    ("data-in-a-subfolder", "prepare", True),
    ("own-output", "prepare", False),
    ("other-stage-output", "prepare", True),   # validate's report dir is not prepare's to replace
    ("unmarked-data", "prepare", True),         # the registry, raw drops, anything a user made
    ("a-file", "prepare", True),
])
def test_atomic_dir_replaces_only_its_own_or_an_empty_directory(tmp_path, existing, owner, refused):
    from pipelines.core.errors import OutputError

    out = tmp_path / "target"
    if existing == "a-file":
        out.write_text("precious")
    elif existing != "absent":
        out.mkdir()
        if existing in ("empty-folders", "data-in-a-subfolder"):
            (out / "plots" / "metrics").mkdir(parents=True)
        if existing == "data-in-a-subfolder":
            (out / "plots" / "metrics" / "precious.tsv").write_bytes(b"keep me")
        elif existing not in ("empty", "empty-folders"):
            (out / "precious.bin").write_bytes(b"keep me")
        if existing == "own-output":
            (out / ".pipelines-output").write_text("prepare\n")
        if existing == "other-stage-output":
            (out / ".pipelines-output").write_text("validate\n")
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    if refused:
        with pytest.raises(OutputError, match="refusing to replace"):
            with atomic_dir(out, owner=owner) as tmp:
                (tmp / "new").write_text("x")
        after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        assert after == before and sorted(p.name for p in tmp_path.iterdir()) == ["target"]
    else:
        with atomic_dir(out, owner=owner) as tmp:
            (tmp / "new").write_text("x")
        assert _names(out) == ["new"]


@pytest.mark.parametrize("content, message", [
    ("text," + "x" * 140_000 + "\nhello,a\n", "header line is 140,005 characters"),
    ("text,label\rhello,a\rhi,b\r", "CR-only line endings"),
])
def test_csv_header_problems_are_one_line_input_errors(tmp_path, content, message):
    from pipelines.core.errors import InputError

    path = tmp_path / "drop.csv"
    path.write_bytes(content.encode())
    with pytest.raises(InputError, match=message):
        read_dataset(path)
