"""The catalogue of bad inputs: exit code, a message naming the fault, the raw file untouched."""
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from pipelines.cli import main

UTF16 = "text,label\nhello,a\n".encode("utf-16")
# (case, file name, bytes or None for "do not create", exit code, fragment the message must name)
BAD_INPUTS = [
    ("missing file", "absent.csv", None, 2, "input not found"),
    ("empty file", "empty.csv", b"", 2, "file is empty"),
    ("only blank lines", "blank.csv", b"\n  \n\n", 2, "file is empty"),
    ("header only", "header.csv", b"text,label\n", 2, "header found but no data rows"),
    ("not utf-8", "latin1.csv", "text,label\ncaf\xe9 au lait,a\n".encode("latin-1"), 2, "not valid UTF-8"),
    ("binary", "binary.csv", b"PK\x03\x04\x00\x00\x08\x00binary", 2, "looks binary"),
    ("utf-16", "utf16.csv", UTF16, 2, "UTF-16"),
    ("semicolon delimiter", "semi.csv", b"text;label\nhello;a\n", 2, "';' as delimiter"),
    ("tab delimiter", "tab.csv", b"text\tlabel\nhello\ta\n", 2, "tab as delimiter"),
    ("unknown format", "data.xlsx", b"whatever", 2, "unsupported format '.xlsx'"),
    ("ragged csv row", "ragged.csv", b"text,label\nhello,a\nhi,b,extra\n", 2, "malformed CSV"),
    ("unclosed quote", "quote.csv", b'text,label\n"hello,a\nhi,b\n', 2, "malformed CSV"),
    ("duplicate header", "dup.csv", b"text,text\nhello,a\n", 2, "duplicate column name"),
    ("broken jsonl line", "bad.jsonl", b'{"text": "hi", "label": "a"}\n{"text": "hi"\n', 2, "line 2 is not valid JSON"),
    ("jsonl not objects", "arr.jsonl", b"[1, 2]\n", 2, "expected an object"),
    ("corrupt parquet", "bad.parquet", b"PAR1 this is not parquet PAR1", 2, "not a readable Parquet"),
    ("missing label column", "nolabel.csv", b"text,intent\nhello there,a\nhi again,b\n", 1,
     "missing column(s): label"),
    ("rows beyond tolerance", "rows.csv", b"text,label\n,a\n   ,a\nok then,a \nfine,a\n", 1,
     "text_not_null"),
]


def contract_here(folder: Path) -> None:
    """A model folder's params: every section at its documented defaults, chosen explicitly (a command
    never falls back to defaults when no params file is there)."""
    (folder / "params.yaml").write_text("# the data contract's defaults\n{}\n")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case, name, content, code, fragment", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input(case, name, content, code, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    contract_here(tmp_path)
    raw = tmp_path / "raw" / name
    raw.parent.mkdir()
    if content is not None:
        raw.write_bytes(content)
        before = sha(raw)
    # A previous good run's report must survive an unreadable input untouched.
    (tmp_path / "reports" / "validate").mkdir(parents=True)
    (tmp_path / "reports" / "validate" / ".pipelines-output").write_text("validate\n")  # validate wrote it
    sentinel = tmp_path / "reports" / "validate" / "result.json"
    sentinel.write_text('{"status": "passed"}')

    rc = main(["validate", str(raw)])
    err = capsys.readouterr().err
    assert rc == code, err
    assert fragment in err
    assert "Traceback" not in err
    if content is not None:
        assert sha(raw) == before, "raw input was modified"
    error_lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(error_lines) == 1
    if code == 2:
        assert sentinel.read_text() == '{"status": "passed"}'
        assert err.strip() == error_lines[0], "unreadable input must give exactly one line"
    else:
        result = json.loads(sentinel.read_text())
        assert result["status"] == "failed" and result["failed_checks"]


def test_empty_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    contract_here(tmp_path)
    (tmp_path / "drops").mkdir()
    assert main(["validate", str(tmp_path / "drops")]) == 2
    assert "holds no .csv, .jsonl or .parquet files" in capsys.readouterr().err


def test_bad_params_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("validate:\n  min_examples: 3\n")
    (tmp_path / "d.csv").write_text("text,label\nhi,a\n")
    assert main(["validate", "d.csv"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: params.yaml: unknown key 'validate.min_examples'"


def test_column_overrides_and_all_outputs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    contract_here(tmp_path)
    rows = [(f"message {i} for {lab}", lab) for lab in ("x", "y") for i in range(5)]
    pd.DataFrame(rows, columns=["body", "intent"]).to_csv(tmp_path / "d.csv", index=False)
    rc = main(["validate", "d.csv", "--text-column", "body", "--label-column", "intent",
               "--report-dir", "out", "--quarantine", "q.jsonl"])
    assert rc == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["status"] == "passed" and result["rows"] == 10
    assert {c["check"] for c in result["checks"]} >= {"text_not_null", "label_conflict", "duplicate_rate"}
    assert result["dataset"]["files"]["d.csv"]["md5"]
    assert (tmp_path / "out" / "data_docs" / "index.html").stat().st_size > 1000
    assert (tmp_path / "q.jsonl").read_text() == ""


def test_console_script_exit_codes(tmp_path, run_cli):
    contract_here(tmp_path)
    (tmp_path / "semi.csv").write_bytes(b"text;label\nhello;a\n")
    proc = run_cli("validate", "semi.csv", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "';' as delimiter" in proc.stderr


def test_html_in_the_data_never_reaches_data_docs_as_markup_and_labels_must_be_text(tmp_path, monkeypatch, capsys):
    """GX writes the unexpected values it shows into Data Docs: they are escaped first. A label that is
    not text (a number or a boolean in JSONL) is a named failure, not a new class."""
    monkeypatch.chdir(tmp_path)
    rows = [{"text": f"ordinary request {i}", "label": "a"} for i in range(6)]
    rows += [{"text": "<script>alert(1)</script> my card", "label": "<img src=x onerror=alert(2)>"},
             {"text": "a numeric label", "label": 1}, {"text": "a boolean label", "label": True}]
    (tmp_path / "drop.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "params.yaml").write_text("validate: {min_examples_per_label: 1, allowed_labels: [a], "
                                          "quarantine_tolerance: 0.0}\n")
    rc = main(["validate", "drop.jsonl"])
    assert rc == 1
    result = json.loads((tmp_path / "reports" / "validate" / "result.json").read_text())
    failed = {c["check"]: c for c in result["checks"] if not c["success"]}
    assert failed["label_is_text"]["unexpected_count"] == 2 and "not text" in failed["label_is_text"]["detail"]
    pages = [p.read_text() for p in (tmp_path / "reports" / "validate" / "data_docs").rglob("*.html")]
    assert any("&lt;img src=x onerror=alert(2)&gt;" in page for page in pages)  # shown, as text
    assert not any("<img src=x" in page or "<script>alert" in page for page in pages)
