"""Where a stage may write: the project's output-path policy, checked before anything is written.

Inputs: the project root (the directory of the params file), the params, the paths a command reads.
Outputs: `Workspace.check_dir` / `check_file` return the resolved path or raise `OutputError`
(exit 2, one line). A target is refused when it is, contains or lies inside something the platform
must never overwrite: the raw data (every dataset the params name), the command's own inputs, the
registry, the DVC directory (cache, config) and any local DVC remote, the git directory, or the
project root itself; and when it lies outside the project, unless `allow_outside` is set
(`pipelines --allow-outside-project`). `dataio.atomic_dir` adds the second half of the rule: an
existing directory is replaced only when it is empty or the same stage's earlier output.

Also here: `outside_experiment`, where git-ignored state (the registry) is when a stage runs in a
DVC experiment's temporary workspace (`dvc exp run --queue/--temp`): in the repository it came from.
"""
from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from pipelines.core.config import Params
from pipelines.core.errors import OutputError


def _abs(path: str | Path, base: Path | None = None) -> Path:
    path = Path(path).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    return Path(os.path.realpath(path))


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def dvc_locations(root: Path) -> list[Path]:
    """The DVC directory, a cache configured elsewhere, and every local remote (from .dvc/config[.local])."""
    dvc_dir = root / ".dvc"
    found = [dvc_dir]
    for name in ("config", "config.local"):
        conf = configparser.ConfigParser(strict=False, interpolation=None)
        try:
            conf.read(dvc_dir / name, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError):
            continue
        for section in conf.sections():
            for key in ("url", "dir"):
                value = conf[section].get(key)
                if value and "://" not in value and (section.startswith("'remote") or section.startswith("remote")
                                                     or section == "cache"):
                    found.append(_abs(value, dvc_dir))  # relative paths in DVC config are relative to .dvc/
    return found


# Files no command ever writes, wherever they are and whatever `--allow-outside-project` says: the
# platform's configuration and DVC's records of it (any model's).
PROTECTED_NAMES = ("params.yaml", "dvc.yaml", "dvc.lock", ".dvcignore", ".gitignore")
PROTECTED_SUFFIXES = (".dvc",)


def repository_root(root: Path) -> Path | None:
    """The nearest folder at or above `root` holding a `.git` or `.dvc`: the checkout a model folder is in."""
    return next((p for p in (root, *root.parents) if (p / ".git").exists() or (p / ".dvc").is_dir()), None)


@dataclass(frozen=True)
class Workspace:
    root: Path
    protected: tuple[tuple[str, Path], ...]
    allow_outside: bool = False

    @classmethod
    def of(cls, params: Params, root: str | Path, inputs: Iterable[str | Path] = (),
           allow_outside: bool = False, relative_to: str | Path | None = None) -> "Workspace":
        """The policy for one command: `root` is the project, `inputs` what the command reads (relative to
        the working directory); the params' own paths are relative to `relative_to` (default: the
        working directory, where the CLI runs a model's commands)."""
        root = _abs(root)
        cwd = Path.cwd()
        base = _abs(relative_to) if relative_to is not None else cwd
        named: list[tuple[str, Path]] = [("the project root", root)]
        for top in dict.fromkeys([root, repository_root(root) or root]):
            named.append(("the git directory", top / ".git"))
            named += [("the DVC cache or remote", p) for p in dvc_locations(top)]
        if "://" not in params.registry.root:
            named.append(("the model registry", _abs(params.registry.root, base)))
        raw = {params.data.raw, *params.lifecycle.datasets.values()}
        named += [("the raw data", _abs(p, base)) for p in sorted(raw) if "://" not in p]
        golden = [p for p in (params.evaluate.holdout, params.evaluate.golden_prompts) if p]
        named += [("a reviewed golden set", _abs(p, base)) for p in golden]
        named += [("an input of this command", _abs(p, cwd)) for p in inputs]
        return cls(root, tuple(dict.fromkeys(named)), allow_outside)

    def _collision(self, target: Path, skip: tuple[str, ...] = ()) -> str | None:
        """Why `target` may not be written (it is, lies inside or around something protected), or None."""
        if ".git" in target.parts:
            return "it lies inside a git directory"
        for what, protected in self.protected:
            if what in skip:
                continue
            if target == protected:
                return f"it is {what}"
            if _inside(protected, target) or (what != "the project root" and _inside(target, protected)):
                return f"it lies {'inside' if _inside(target, protected) else 'around'} {what} ({protected})"
        return None

    def _check(self, path: str | Path, kind: str, may_be: tuple[str, ...] = ()) -> Path:
        target = _abs(path, Path.cwd())
        if target.name in PROTECTED_NAMES or target.suffix in PROTECTED_SUFFIXES:
            raise OutputError(f"refusing to write {kind} {path}: {target.name} is the platform's configuration "
                              "or DVC's record of it, never an output")
        why = self._collision(target, skip=may_be)
        if why:
            raise OutputError(f"refusing to write {kind} {path}: {why}")
        if not self.allow_outside and not _inside(target, self.root):
            raise OutputError(f"refusing to write {kind} {path}: it is outside the project {self.root} "
                              "(pass --allow-outside-project to allow it)")
        return target

    def check_dir(self, path: str | Path, may_be: tuple[str, ...] = ()) -> Path:
        """`may_be`: protected things this command may write into (`sample`: the raw data)."""
        return self._check(path, "output directory", may_be)

    def check_file(self, path: str | Path, may_be: tuple[str, ...] = ()) -> Path:
        target = self._check(path, "output file", may_be)
        if target.is_dir():
            raise OutputError(f"refusing to write output file {path}: it is a directory")
        return target

    def check_registry_root(self, location: str) -> None:
        """`registry.root` (a local one) is state of its own: never the project folder, nor inside or
        around the raw data, a golden set, the git or DVC directory."""
        if "://" in location:
            return
        why = self._collision(_abs(location, Path.cwd()), skip=("the model registry", "an input of this command"))
        if why:
            raise OutputError(f"registry.root {location}: {why}")


EXPERIMENT_WORKSPACES = Path(".dvc") / "tmp" / "exps"  # where `dvc exp run --queue/--temp` checks a commit out


def experiment_origin(folder: Path) -> tuple[Path, Path] | None:
    """For a folder inside a DVC experiment's temporary workspace (`<repo>/.dvc/tmp/exps/<tmp>/...`):
    (the workspace root, the repository it was made from); None for any other folder."""
    folder = _abs(folder)
    for parent in (folder, *folder.parents):
        if parent.parts[-4:-1] == EXPERIMENT_WORKSPACES.parts:
            return parent, parent.parents[3]
    return None


def outside_experiment(location: str, folder: Path) -> str:
    """A relative location (the registry root) as the repository the experiment came from sees it:
    git-ignored state such as the registry is not in the experiment's workspace, only in its origin.
    A URL, an absolute path, or a folder outside an experiment workspace is returned as given."""
    found = experiment_origin(folder) if "://" not in location and not Path(location).is_absolute() else None
    if found is None:
        return location
    workspace, origin = found
    return str(_abs(origin / _abs(folder).relative_to(workspace) / location))
