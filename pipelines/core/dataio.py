"""Reading datasets and writing outputs safely.

Inputs: a path to a CSV, JSONL or Parquet file, or a directory of them (weekly drops).
Outputs: one pandas DataFrame with every source column plus two provenance columns,
`_source` (file path relative to the dataset root) and `_row` (1-based record number in that
file), so any finding can name the exact row. Unreadable input raises `InputError` with a
one-line cause. Also: file hashing and atomic writes (temp file or dir, then rename).
"""
from __future__ import annotations

import csv
import io
import json
import re
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd

from pipelines.core.errors import InputError, OutputError
from pipelines.core.hashing import file_digests

SUPPORTED = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
PROVENANCE = ("_source", "_row")
_SNIFF_BYTES = 8192
_OTHER_DELIMITERS = {";": "';'", "\t": "tab", "|": "'|'"}


def discover(path: str | Path) -> list[Path]:
    """The data files a dataset path stands for, in a stable order."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_file():
        if path.suffix.lower() not in SUPPORTED:
            raise InputError(
                f"{path}: unsupported format '{path.suffix or '(no extension)'}'; "
                "expected .csv, .jsonl or .parquet"
            )
        return [path]
    files = sorted(
        p for p in path.rglob("*")
        if p.is_file() and p.suffix.lower() in SUPPORTED
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise InputError(f"{path}: directory holds no .csv, .jsonl or .parquet files")
    return files


def read_dataset(path: str | Path) -> pd.DataFrame:
    """Read a file or a directory of drops into one frame with `_source` and `_row`."""
    root = Path(path)
    files = discover(root)
    frames = []
    columns: list[str] | None = None
    for f in files:
        frame = read_file(f)
        if columns is None:
            columns, first = list(frame.columns), f
        elif list(frame.columns) != columns:
            raise InputError(
                f"{f}: columns {list(frame.columns)} differ from {columns} in {first.name}; "
                "every drop of a dataset must share one schema"
            )
        rel = f.name if root.is_file() else f.relative_to(root).as_posix()
        frame["_source"] = rel
        frame["_row"] = range(1, len(frame) + 1)
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    out["_source"] = out["_source"].astype("category")
    return out


def read_file(path: Path) -> pd.DataFrame:
    """Read one data file; raise InputError naming the cause when it cannot be read."""
    kind = SUPPORTED[path.suffix.lower()]
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    if kind == "parquet":
        return _read_parquet(path)
    text = _decode(path)
    if not text.strip():
        raise InputError(f"{path}: file is empty (only whitespace)")
    frame = _read_csv(path, text) if kind == "csv" else _read_jsonl(path, text)
    if frame.empty:
        raise InputError(f"{path}: header found but no data rows")
    return frame


def _decode(path: Path) -> str:
    data = path.read_bytes()
    head = data[:_SNIFF_BYTES]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(f"{path}: file is UTF-16 encoded; convert it to UTF-8")
    if b"\x00" in head:
        raise InputError(f"{path}: file looks binary (contains NUL bytes), not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InputError(
            f"{path}: not valid UTF-8 (byte 0x{data[err.start]:02x} on line {line}); re-encode as UTF-8"
        ) from None


_MAX_HEADER_CHARS = 65_536


def _read_csv(path: Path, text: str) -> pd.DataFrame:
    if "\r" in text and "\n" not in text:
        raise InputError(f"{path}: uses CR-only line endings (classic Mac); convert to LF or CRLF")
    header_line = text.lstrip("\n").split("\n", 1)[0].rstrip("\r")
    if len(header_line) > _MAX_HEADER_CHARS:
        raise InputError(f"{path}: header line is {len(header_line):,} characters, over {_MAX_HEADER_CHARS:,}; "
                         "is this a CSV file with a header row?")
    try:
        header = next(csv.reader([header_line]), [])
    except csv.Error as err:
        raise InputError(f"{path}: malformed CSV header ({err})") from None
    _check_header(path, header)
    try:
        frame = pd.read_csv(
            io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""],
            on_bad_lines="error", skip_blank_lines=True,
        )
    except (pd.errors.ParserError, csv.Error) as err:
        detail = str(err).replace("Error tokenizing data. C error: ", "").strip().rstrip(".")
        raise InputError(f"{path}: malformed CSV: {detail}") from None
    return frame


def _check_header(path: Path, header: list[str]) -> None:
    if len(header) == 1:
        for delim, name in _OTHER_DELIMITERS.items():
            if delim in header[0]:
                raise InputError(
                    f"{path}: header '{header[0][:60]}' is one column; the file seems to use "
                    f"{name} as delimiter, but CSV input must be comma-separated"
                )
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise InputError(f"{path}: duplicate column name(s) in header: {', '.join(dupes)}")
    if any(not c.strip() for c in header):
        raise InputError(f"{path}: header has an empty column name")


def _read_jsonl(path: Path, text: str) -> pd.DataFrame:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise InputError(f"{path}: line {number} is a JSON {type(record).__name__}, expected an object")
        records.append(record)
    return pd.DataFrame.from_records(records)


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise InputError(f"{path}: not a readable Parquet file ({type(err).__name__})") from None
    if frame.empty:
        raise InputError(f"{path}: Parquet file has no rows")
    return frame


def normalise_text(series: pd.Series, form: str, lowercase: bool) -> pd.Series:
    """Unicode normal form, whitespace runs collapsed to one space, stripped."""
    out = series.astype("string").str.normalize(form).str.replace(r"\s+", " ", regex=True).str.strip()
    return out.str.lower() if lowercase else out


def dataset_fingerprint(path: str | Path) -> dict[str, dict[str, str]]:
    """Digests of every file of a dataset, keyed by its path relative to the dataset root."""
    root = Path(path)
    return {
        (f.name if root.is_file() else f.relative_to(root).as_posix()): file_digests(f)
        for f in discover(root)
    }


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text so that readers see the old file or the whole new one, never a part."""
    atomic_write_bytes(path, text.encode("utf-8"))


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created when missing) against other processes of this machine."""
    import fcntl

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def spreadsheet_safe(value: object) -> object:
    """A CSV cell a spreadsheet will not run as a formula (OWASP's CSV injection advice): a text
    starting with = + - @ (or a tab or CR), unless it is a plain number, gets a leading apostrophe."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def write_json(path: str | Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


OUTPUT_MARKER = ".pipelines-output"


def check_replaceable(path: Path, owner: str) -> None:
    """Refuse (OutputError) to replace `path` unless it is absent, a directory holding no file (empty
    folders at most), or a directory that `owner` wrote before (it holds the marker naming `owner`).
    Nothing else is ever deleted."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise OutputError(f"refusing to replace {path}: it is a file, not a {owner} output directory")
    marker = path / OUTPUT_MARKER
    if marker.is_file() and marker.read_text(encoding="utf-8", errors="replace").strip() == owner:
        return
    if any(p.is_file() or p.is_symlink() for p in path.rglob("*")):  # empty folders (DVC makes outs' parents) hold nothing
        made_by = marker.read_text(encoding="utf-8", errors="replace").strip() if marker.is_file() else None
        why = f"it holds the output of {made_by!r}" if made_by else "it is not empty and was not written by it"
        raise OutputError(f"refusing to replace {path} with the output of {owner!r}: {why}; "
                          "choose a new or empty directory")


@contextmanager
def atomic_dir(path: str | Path, owner: str) -> Iterator[Path]:
    """Yield a temp dir beside `path`; on success it replaces `path` in one rename.

    `path` must be absent, empty, or an earlier output of the same `owner` (see `check_replaceable`);
    the new directory carries the marker `.pipelines-output` naming `owner`. On any error the temp dir
    is removed and the existing `path` is left untouched.
    """
    path = Path(os.path.abspath(path))
    check_replaceable(path, owner)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    tmp.chmod(0o777 & ~current_umask())
    try:
        yield tmp
        (tmp / OUTPUT_MARKER).write_text(owner + "\n", encoding="utf-8")
        check_replaceable(path, owner)  # it may have changed while the stage ran
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
