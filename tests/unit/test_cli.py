"""The command line's choice of model: a command names one model and reads that model's own params and
registry, wherever it runs; with none named and no params file, it says so instead of using defaults."""
from __future__ import annotations

import pytest
import yaml

from pipelines.cli import main
from pipelines.registry import store as registry


@pytest.fixture
def checkout(tmp_path):
    for name in ("alpha", "beta"):
        folder = tmp_path / "projects" / name
        folder.mkdir(parents=True)
        (folder / "params.yaml").write_text(yaml.safe_dump({"registry": {"root": f"../../registry-{name}",
                                                                         "model_name": name}}))
    registry.init(registry.open_store(str(tmp_path / "registry-beta"), "beta"), by="beta's owner")
    return tmp_path


def test_a_model_named_in_another_models_folder_is_read_with_its_own_params(checkout, monkeypatch, capsys):
    monkeypatch.chdir(checkout / "projects" / "alpha")
    assert main(["registry", "list", "--model", "beta"]) == 0
    out = capsys.readouterr()
    assert "by beta's owner" in out.out  # beta's registry (registry-beta), not alpha's params with beta's name
    assert not (checkout / "registry-alpha").exists()


@pytest.mark.parametrize("where, argv, says", [
    ("", ["lineage"], "no params.yaml here: run in a model's folder, or name the model"),
    ("", ["registry", "list"], "no params.yaml here"),
    ("projects/alpha", ["registry", "list", "--model", "gamma"],
     "--model gamma: these params are alpha's and there is no model folder projects/gamma/"),
    ("projects/alpha", ["sample", "--rows", "-5"], "error: pipelines sample: argument --rows: must be a whole number"),
    ("projects/alpha", ["cost", "--measure", "--seconds", "inf"], "must be a finite number > 0, not inf"),
])
def test_a_command_without_its_model_says_so_in_one_line(checkout, monkeypatch, capsys, where, argv, says):
    monkeypatch.chdir(checkout / where)
    with pytest.raises(SystemExit) if argv[0] in ("sample", "cost") else _no_raise():
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
