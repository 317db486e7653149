"""Inside a DVC experiment's temporary workspace, git-ignored state (the registry) is the origin's."""
from __future__ import annotations

import pytest

from pipelines.core.paths import experiment_origin, outside_experiment


@pytest.mark.parametrize("folder, location, expected", [
    # `dvc exp run --queue/--temp`: <repo>/.dvc/tmp/exps/<tmp>/<model folder>
    ("repo/.dvc/tmp/exps/tmpab12/projects/tc", "../../registry", "repo/registry"),
    ("repo/.dvc/tmp/exps/tmpab12/projects/tc", "registry", "repo/projects/tc/registry"),
    ("repo/.dvc/tmp/exps/tmpab12", "registry", "repo/registry"),
    ("repo/projects/tc", "../../registry", "../../registry"),  # the repository itself: as given
    ("repo/.dvc/tmp/exps/tmpab12/projects/tc", "s3://bucket/registry", "s3://bucket/registry"),
    ("repo/.dvc/tmp/exps/tmpab12/projects/tc", "/srv/registry", "/srv/registry"),
    ("repo/.dvc/tmp/other/tmpab12/projects/tc", "registry", "registry"),  # not DVC's experiment folder
])
def test_a_relative_registry_is_the_origin_repositorys(tmp_path, folder, location, expected):
    path = tmp_path / folder
    path.mkdir(parents=True)
    got = outside_experiment(location, path)
    want = str(tmp_path / expected) if expected.startswith("repo/") else expected
    assert got == want


def test_the_origin_and_workspace_of_an_experiment(tmp_path):
    folder = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpx" / "projects" / "tc"
    folder.mkdir(parents=True)
    assert experiment_origin(folder) == (tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpx", tmp_path / "repo")
    assert experiment_origin(tmp_path) is None
