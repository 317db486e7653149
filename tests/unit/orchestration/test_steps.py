"""The lifecycle steps on a real git + DVC repository, each task in a fresh checkout of the run's ref:
stage exit codes mapped to retry or not, an unchanged stage restored from the run-cache on a worker
with another cache, the user's checkout untouched, and the faults of section 6 (bad model folder, no
data, unreachable git or DVC remote, a refused push, an unusable scratch disk) each named in one line."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipelines.core.errors import CheckFailed, ConfigError, InputError
from pipelines.orchestration import gitops, steps
from pipelines.orchestration.gitops import TransientError
from pipelines.orchestration.runspace import RunRef, Shared, run_ref_name
from tests.conftest import cli_env

STAGE = textwrap.dedent("""\
    import sys
    code = int(open("code.txt").read())
    if code:
        print("error: the data is bad", file=sys.stderr)
        sys.exit(code)
    open("out.txt", "w").write("ok")
    """)


def _git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", *args], cwd=cwd, check=True,
                   capture_output=True)


@pytest.fixture
def platform(tmp_path):
    """A platform repository with one model folder `projects/m` whose `validate` stage exits with code.txt."""
    repo = tmp_path / "repo"
    project = repo / "projects" / "m"
    project.mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True, env=cli_env())
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "-d", "local", "../../storage"], cwd=repo,
                   check=True, env=cli_env())
    (project / "params.yaml").write_text("registry: {root: ../../registry, model_name: m}\n")
    (project / "code.txt").write_text("0")
    (project / "stage.py").write_text(STAGE)
    (project / "dvc.yaml").write_text(textwrap.dedent(f"""\
        stages:
          validate:
            cmd: {sys.executable} stage.py
            deps: [code.txt, stage.py]
            outs: [out.txt]
        """))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "platform")
    return repo


def shared(tmp_path: Path, repo: Path, worker: str = "a", **kw) -> Shared:
    return Shared(git_remote=str(repo), cache_dir=str(tmp_path / f"cache-{worker}"),
                  scratch=str(tmp_path / f"scratch-{worker}"), **kw)


def run_of(repo: Path, run_id: str = "r1") -> RunRef:
    """The run's ref, started at the platform's HEAD (what the snapshot task does first)."""
    ref = run_ref_name("m", run_id)
    _git(repo, "update-ref", ref, "HEAD")
    return RunRef("m", "projects/m", run_id, ref, gitops.rev(repo, "HEAD"))


@pytest.mark.parametrize("code, error, retried", [(1, CheckFailed, False), (2, ConfigError, False),
                                                  (3, TransientError, True)])
def test_stage_failures_map_to_retry_or_not(tmp_path, platform, code, error, retried):
    (platform / "projects" / "m" / "code.txt").write_text(str(code))
    _git(platform, "commit", "-qam", f"exit {code}")
    with pytest.raises(error) as err:
        steps.run_stage(shared(tmp_path, platform), run_of(platform), "validate")
    assert steps.is_deterministic(err.value) is not retried
    if not retried:
        assert str(err.value) == "validate: the data is bad"
    assert not list((tmp_path / "scratch-a").iterdir()), "the task's workspace was left behind"


def test_a_stage_runs_once_then_comes_from_the_run_cache_on_another_worker(tmp_path, platform):
    status_before = subprocess.run(["git", "status", "--porcelain"], cwd=platform, capture_output=True, text=True).stdout
    first = steps.run_stage(shared(tmp_path, platform, "a"), run_of(platform, "r1"), "validate")
    assert first["ran"] is True
    lock = subprocess.run(["git", "show", f"{first['commit']}:projects/m/dvc.lock"], cwd=platform,
                          capture_output=True, text=True, check=True).stdout
    assert "out.txt" in lock and gitops.rev(platform, run_ref_name("m", "r1")) == first["commit"]
    again = steps.run_stage(shared(tmp_path, platform, "b"), run_of(platform, "r2"), "validate")
    assert again["ran"] is False  # a fresh checkout, another cache: DVC's run-cache from the shared remote
    after = subprocess.run(["git", "status", "--porcelain"], cwd=platform, capture_output=True, text=True).stdout
    assert after == status_before and not (platform / "projects" / "m" / "out.txt").exists()
    with pytest.raises(ConfigError, match="unknown stage"):
        steps.run_stage(shared(tmp_path, platform), run_of(platform), "deploy")


def test_snapshot_refuses_a_dataset_without_data(tmp_path, platform):
    (platform / "projects" / "m" / "data" / "raw").mkdir(parents=True)
    (platform / "projects" / "m" / "data" / "raw" / ".hidden").write_text("x")
    with pytest.raises(InputError, match="dataset 'default': no data at"):
        steps.start(shared(tmp_path, platform), "projects/m", "m", {}, {"run_id": "r"})
    with pytest.raises(ConfigError, match="epochs must be"):
        steps.start(shared(tmp_path, platform), "projects/m", "m", {"epochs": 0}, {"run_id": "r"})
    assert gitops.rev(platform, run_ref_name("m", "r")) is None  # nothing was pushed


@pytest.mark.parametrize("project, model, message", [
    ("projects/m", "other", "registry.model_name is 'm', but the folder is 'other'"),
    ("projects/none", "none", "model 'none': no projects/none/params.yaml in the repository"),
    ("projects/m", "../x", "model name"),
])
def test_a_bad_model_folder_is_named(tmp_path, platform, project, model, message):
    with pytest.raises(ConfigError, match=message) as err:
        steps.start(shared(tmp_path, platform), project, model, {}, {"run_id": "r"})
    assert steps.is_deterministic(err.value) and "\n" not in str(err.value)


def test_unreachable_remotes_and_a_refused_push_are_retried_and_write_nothing(tmp_path, platform):
    gone = shared(tmp_path, tmp_path / "no-such-repo")
    with pytest.raises(TransientError, match="git ls-remote"):
        steps.run_stage(gone, run_of(platform), "validate")
    with pytest.raises(TransientError, match="validate: ERROR: dvc push: .*Not a directory"):  # the DVC remote
        steps.run_stage(shared(tmp_path, platform, dvc_remote="/dev/null/remote"), run_of(platform), "validate")
    hook = platform / ".git" / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'refs/runs is read-only here' >&2\nexit 1\n")
    hook.chmod(0o755)
    run = run_of(platform)
    with pytest.raises(TransientError, match="git push"):
        steps.run_stage(shared(tmp_path, platform), run, "validate")
    assert gitops.rev(platform, run.ref) == run.commit  # the run's ref did not move


def test_a_snapshot_the_dvc_remote_refuses_is_retried_and_pushes_no_run(tmp_path, platform):
    raw = platform / "projects" / "m" / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "drop.csv").write_text("text,label\nhello,a\n")
    with pytest.raises(TransientError, match="snapshot of 'default': ERROR: dvc push: .*Not a directory"):
        steps.start(shared(tmp_path, platform, dvc_remote="/dev/null/remote"), "projects/m", "m", {}, {"run_id": "r"})
    assert gitops.rev(platform, run_ref_name("m", "r")) is None


def test_an_unusable_scratch_disk_is_a_retryable_error(tmp_path, platform):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):  # not a PipelineError: Airflow retries (possibly on another worker)
        steps.run_stage(Shared(str(platform), str(tmp_path / "c"), str(tmp_path / "file" / "scratch")),
                        run_of(platform), "validate")


def test_new_drops_are_detected_once(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "drop-0000.csv").write_text("text,label\na,b\n")
    new, seen = steps.new_drops(raw, None)
    assert new == []  # first look only remembers
    assert steps.new_drops(raw, seen)[0] == []
    (raw / "drop-0001.csv").write_text("text,label\nc,d\n")
    (raw / ".hidden").write_text("x")
    new, seen = steps.new_drops(raw, seen)
    assert new == ["drop-0001.csv"] and steps.new_drops(raw, seen)[0] == []


def test_notify_serving_waits_for_the_new_version(tmp_path, platform):
    """A fake server that switches to v2 after a few polls: confirmed; one stuck on v1: a retryable error."""
    from fastapi import FastAPI, Response

    from tests.serving_support import start_loopback

    polls = {"n": 0}
    app = FastAPI()

    @app.get("/readyz")
    def readyz():
        polls["n"] += 1
        return Response("ok", headers={"X-Model-Version": "2" if polls["n"] >= 3 else "1"})

    server, url = start_loopback(app)
    try:
        (platform / "projects" / "m" / "params.yaml").write_text(
            "registry: {root: ../../registry, model_name: m}\n"
            f"lifecycle: {{serving_urls: ['{url}'], serving_timeout_s: 4}}\n")
        _git(platform, "commit", "-qam", "serving")
        assert steps.notify_serving(shared(tmp_path, platform), run_of(platform), 2) == [url] and polls["n"] >= 3
        with pytest.raises(TransientError, match="still serves v2, not v3"):
            steps.notify_serving(shared(tmp_path, platform), run_of(platform), 3)
    finally:
        server.should_exit = True


def test_concurrent_runs_both_land_on_the_lineage_branch(tmp_path, platform):
    """Two runs finishing at once race for the lineage branch: the compare-and-swap push loses neither."""
    from concurrent.futures import ThreadPoolExecutor

    runs = [run_of(platform, f"r{i}") for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda ir: steps.record(shared(tmp_path, platform, f"w{ir[0]}"), ir[1],
                                                     {"dag_id": "lifecycle__m", "run_id": ir[1].run_id}),
                             enumerate(runs)))
    tip = gitops.rev(platform, "refs/heads/lineage")
    for out in done:
        assert subprocess.run(["git", "merge-base", "--is-ancestor", out["lineage_commit"], tip],
                              cwd=platform).returncode == 0
    assert int(subprocess.run(["git", "rev-list", "--count", "--first-parent", "lineage"], cwd=platform,
                              capture_output=True, text=True).stdout) == 5  # four runs on the project commit


def test_a_candidate_that_already_is_champion_is_not_pulled_or_registered_again(tmp_path):
    import json

    from pipelines.registry import store as registry
    from pipelines.training.modeling import candidate_hash

    cand = tmp_path / "cand"
    (cand / "adapter").mkdir(parents=True)
    (cand / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    (cand / "train_config.json").write_text(json.dumps({"base_model": "minilm", "base_hash": "h", "params": {}}))
    digest = candidate_hash(cand)
    decision = tmp_path / "decision.json"
    decision.write_text(json.dumps({"candidate_hash": digest, "passed": True, "rules": []}))
    store = registry.open_store(str(tmp_path / "registry"), "m")
    registry.init(store)
    assert steps._already_champion(store, {"passed": True, "candidate": digest}) is None  # no champion yet
    registry.promote(store, "m", cand, decision, None)
    assert steps._already_champion(store, {"passed": True, "candidate": digest}) == {"version": 1, "changed": False}
    assert steps._already_champion(store, {"passed": True, "candidate": "other"}) is None
    assert steps._already_champion(store, {"passed": False, "candidate": digest}) is None


def test_an_answer_to_the_approval_step_is_kept_in_the_runs_git_ref_and_promote_reads_it_there(tmp_path, platform):
    """`record_review` commits who answered on this run's own ref; `promote` refuses a run that asked for
    an approval before any is recorded there (what an XCom or a task state set through the API cannot fake),
    and a pointer to another run's ref."""
    from pipelines.orchestration import records

    run = run_of(platform, "r1")
    _git(platform, "update-ref", run_ref_name("m", "r0"), "HEAD")
    with pytest.raises(CheckFailed, match="not this run's ref"):
        steps.record_review(shared(tmp_path, platform), run, {"run_id": "r0"}, {"chosen_options": ["Approve"]})
    with pytest.raises(CheckFailed, match="without an answer"):
        steps.record_review(shared(tmp_path, platform), run, {"run_id": "r1"}, {"chosen_options": []})
    answer = {"chosen_options": ["Approve"], "responded_by_user": {"id": "ana", "name": "Ana"},
              "responded_at": "2026-12-01T10:00:00+00:00"}
    kept = steps.record_review(shared(tmp_path, platform), run, {"run_id": "r1"}, answer)
    assert kept["review"] == {"decision": "approved", "by": "Ana", "by_id": "ana", "at": "2026-12-01T10:00:00+00:00"}
    assert gitops.rev(platform, run.ref) == kept["commit"] != run.commit
    assert records.read(str(platform), "m", "r1")["review"] == kept["review"]
    assert gitops.is_ancestor(platform, run.commit, kept["commit"])  # on top of the gate's commit
    with pytest.raises(CheckFailed, match="not this run's ref"):
        steps.promote(shared(tmp_path, platform), run, {"run_id": "r0"})


def test_a_checkout_that_moved_is_named_not_mistaken_for_a_remote(tmp_path):
    gone = Shared(git_remote=str(tmp_path / "moved-away"), cache_dir=str(tmp_path / "c"), scratch=str(tmp_path / "s"))
    with pytest.raises(ConfigError, match="does not exist \\(the checkout moved or was deleted\\?\\)"):
        gone.resolve("projects/m", "data/raw", "the default dataset")
    remote = Shared(git_remote="https://git.example.com/platform.git", cache_dir="c", scratch="s")
    with pytest.raises(ConfigError, match="is relative, but the git remote"):
        remote.resolve("projects/m", "data/raw", "the default dataset")
    assert gone.resolve("projects/m", "s3://bucket/raw", "x") == "s3://bucket/raw"


def test_a_snapshot_is_never_taken_twice_in_one_run(tmp_path, platform):
    """Clearing a task of a run re-runs its setup (`snapshot`): the run's ref is kept, never rewritten."""
    (platform / "projects" / "m" / "data" / "raw").mkdir(parents=True)
    (platform / "projects" / "m" / "data" / "raw" / "drop.csv").write_text("text,label\nhello there,a\n")
    first = steps.start(shared(tmp_path, platform), "projects/m", "m", {}, {"run_id": "r"})
    later = steps.run_stage(shared(tmp_path, platform), RunRef.of(first), "validate")
    again = steps.start(shared(tmp_path, platform), "projects/m", "m", {}, {"run_id": "r"})
    assert again["commit"] == later["commit"] == gitops.rev(platform, run_ref_name("m", "r"))
    assert again["snapshot"] == first["snapshot"] and again["require_approval"] is False
    steps.fail(shared(tmp_path, platform), "m", "projects/m", "r", "promote", CheckFailed("no approval recorded"))
    resumed = steps.start(shared(tmp_path, platform), "projects/m", "m", {}, {"run_id": "r"})
    from pipelines.orchestration import records

    assert gitops.is_ancestor(platform, again["commit"], resumed["commit"])  # on top: history kept
    assert not records.read(str(platform), "m", "r").get("failed")  # the run goes on
