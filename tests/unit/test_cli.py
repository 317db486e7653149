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


# Every command that works on one model, run where none is selected: at the checkout's root (the models
# are listed) and in a folder outside any checkout (there are none). It never runs on default params.
ONE_MODEL = [["validate"], ["prepare"], ["train"], ["evaluate"], ["gate"], ["promote"], ["rollback", "--reason", "r"],
             ["registry", "list"], ["registry", "verify"], ["registry", "keygen", "--out", "k.pem"], ["serve"],
             ["vllm-promote", "--url", "http://127.0.0.1:9"], ["lineage", "--alias", "champion"],
             ["sample", "--out", "drop.csv"]]


@pytest.mark.parametrize("argv", ONE_MODEL, ids=lambda a: " ".join(a[:2]))
@pytest.mark.parametrize("where, models", [("", "alpha, beta"), ("../outside", "none")], ids=["root", "outside"])
def test_a_one_model_command_with_no_model_selected_lists_the_models(checkout, monkeypatch, capsys, argv, where,
                                                                   models):
    (checkout / where).mkdir(exist_ok=True)
    monkeypatch.chdir(checkout / where)
    before = sorted(p.relative_to(checkout.parent) for p in checkout.parent.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {argv[0]}: no model selected") and f"(models: {models})" in err, err
    assert err.count("\n") == 1
    assert sorted(p.relative_to(checkout.parent) for p in checkout.parent.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("where, argv, says", [
    ("", ["--params", "nope.yaml", "lineage"], "params file nope.yaml not found"),
    ("projects/alpha", ["--params", "nope.yaml", "validate"], "params file nope.yaml not found"),
    ("", ["--model", "gamma", "lineage"], "no model folder projects/gamma/ with a params.yaml here or above "
                                          "(models: alpha, beta)"),
    ("projects/alpha", ["registry", "list", "--model", "gamma"],
     "--model gamma: these params are alpha's and there is no model folder projects/gamma/"),
    ("projects/alpha", ["sample", "--rows", "-5"], "error: pipelines sample: argument --rows: must be a whole number"),
    ("projects/alpha", ["cost", "--measure", "--seconds", "inf"], "must be a finite number > 0, not inf"),
    ("projects/beta", ["lineage", "--html", "params.yaml"], "params.yaml is the platform's configuration"),
    ("projects/beta", ["lineage", "--html", "../../registry-beta/beta/x.html"], "registry"),
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


def test_a_report_goes_wherever_its_user_names_outside_the_project_too(checkout, monkeypatch, capsys):
    monkeypatch.chdir(checkout / "projects" / "beta")
    assert main(["lineage", "--html", str(checkout.parent / "elsewhere" / "chain.html")]) == 2
    err = capsys.readouterr().err
    assert "alias 'champion' is not set" in err and "outside the project" not in err  # past the output policy
