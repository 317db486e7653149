"""The real banking77 dataset (10,003 queries, 77 intents) must pass validation with default params."""
import json

from pipelines.cli import main


def test_banking77_passes_validation(banking77, tmp_path, monkeypatch, capsys):
    before = banking77.read_bytes()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("# the data contract's defaults\n{}\n")
    rc = main(["--allow-outside-project", "validate", str(banking77), "--text-column", "text", "--label-column", "category",
               "--report-dir", str(tmp_path / "rep"), "--quarantine", str(tmp_path / "q.jsonl")])
    assert rc == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "rep" / "result.json").read_text())
    assert result["status"] == "passed" and result["rows"] == 10003
    by_name = {c["check"]: c for c in result["checks"]}
    assert by_name["min_examples_per_label"]["observed_value"] == 35
    assert round(by_name["max_imbalance_ratio"]["observed_value"], 2) == 5.34
    assert banking77.read_bytes() == before
