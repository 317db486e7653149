"""The documentation site builds in strict mode (what `./dev.sh docs` runs), with the reference pages
generated from the code; a broken link fails the build; the README's links all reach a page."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=root,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True, text=True,
                          timeout=300)


def copy_of_docs(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "docs", root / "docs")
    shutil.copy(ROOT / "mkdocs.yml", root / "mkdocs.yml")
    (root / "pipelines").symlink_to(ROOT / "pipelines")  # the hook generates the reference from this code
    return root


def test_the_site_builds_strictly_with_the_generated_reference(tmp_path):
    proc = build(ROOT, tmp_path / "site")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    params = (tmp_path / "site" / "reference" / "params" / "index.html").read_text()
    assert "pipelines init" in cli and "train.lora.r" in params


@pytest.mark.parametrize("page, damage, says", [
    ("byod.md", "\nSee [the missing page](nowhere.md).\n", "nowhere.md"),
    ("quickstart.md", "\nSee [a section](concepts/gate.md#no-such-heading).\n", "no-such-heading"),
])
def test_a_broken_link_fails_the_build(tmp_path, page, damage, says):
    root = copy_of_docs(tmp_path)
    with open(root / "docs" / page, "a") as fh:
        fh.write(damage)
    proc = build(root, tmp_path / "site")
    assert proc.returncode != 0 and says in proc.stderr, proc.stderr[-2000:]


def test_every_link_of_the_readme_reaches_a_page():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    local = [link for link in links if not link.startswith("http")]
    assert local and all((ROOT / link).is_file() for link in local), [x for x in local if not (ROOT / x).is_file()]
