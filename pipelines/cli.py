"""The `pipelines` command: one subcommand per stage, configuration from params.yaml.

Inputs: argv and params.yaml (`--params` to choose another file). Outputs: whatever the stage
writes; exit 0 on success, 1 when the data fails its checks, 2 for unreadable input or bad
configuration. Known errors print one line `error: ...` on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from pathlib import Path
from typing import Callable, Sequence, get_args

from pipelines.core.config import LifecycleParams
from pipelines.core.errors import CheckFailed, ConfigError, PipelineError
from pipelines.tasks import names as task_names

Handler = Callable[[argparse.Namespace], int]


def find_projects(start):
    """The `projects/` folder of the platform checkout at or above `start` (None if there is none)."""
    from pathlib import Path

    for base in [Path(start).resolve(), *Path(start).resolve().parents]:
        if (base / "projects").is_dir() and any((base / "projects").glob("*/params.yaml")):
            return base / "projects"
    return None


def _enter_project(args: argparse.Namespace) -> None:
    """`pipelines --model NAME ...` runs the command in the model's folder projects/NAME (like `git -C`);
    so does a command's own `--model NAME` when neither --params nor ./params.yaml names a project."""
    from pathlib import Path

    from pipelines.core.config import check_model_name

    explicit = args.project_model
    name = explicit or (getattr(args, "model", None) if _no_params_file(args) else None)
    if not name:
        return
    check_model_name(name)
    projects = find_projects(Path.cwd())
    folder = projects / name if projects is not None else None
    if folder is None or not (folder / "params.yaml").is_file():
        if explicit:
            raise ConfigError(f"no model folder projects/{name}/ with a params.yaml here or above "
                              f"(models: {_model_names(projects)})")
        return
    os.chdir(folder)


def _models(args: argparse.Namespace) -> int:
    """Every model of the platform: its folder, DAG, champion and newest run."""
    import json
    from pathlib import Path

    from pipelines.core.config import load_params
    from pipelines.orchestration import records
    from pipelines.registry import access
    from pipelines.registry import store as registry

    projects = find_projects(Path.cwd())
    if projects is None:
        raise ConfigError("no projects/ folder with a model here or above")
    rows = []
    for path in sorted(projects.glob("*/params.yaml")):
        name = path.parent.name
        try:
            params = load_params(path)
            store = access.model_store(params, name, path.parent)
            champ = registry.aliases(registry.read_ledger(store)).get("champion")
            runs = records.list_runs(str(projects.parent), name, limit=1)
            rows.append({"model": name, "dag_id": f"lifecycle__{name}", "task": params.data.task,
                         "champion": champ, "last_run": runs[0].get("run_id") if runs else None,
                         "note": runs[0].get("note") if runs else None})
        except PipelineError as err:
            rows.append({"model": name, "dag_id": f"lifecycle__{name}", "error": str(err)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        tail = f"error: {r['error']}" if "error" in r else (
            f"{r['task']:<14} champion {('v' + str(r['champion'])) if r['champion'] else '-':<5} "
            f"last run {r['last_run'] or '-'}: {r['note'] or ''}")
        print(f"{r['model']:<20} {r['dag_id']:<32} {tail}")
    return 0


def _model_names(projects) -> str:
    return ", ".join(sorted(p.parent.name for p in projects.glob("*/params.yaml"))) if projects else "none"


def _no_model_selected(args: argparse.Namespace) -> ConfigError:
    """The one answer of a one-model command run where no model is selected: never the defaults."""
    return ConfigError(f"{args.command}: no model selected (no params.yaml in {Path.cwd()}): run it in a model's "
                       f"folder or name one: pipelines --model NAME {args.command} ... "
                       f"(models: {_model_names(find_projects(Path.cwd()))})")


def _params_file(args: argparse.Namespace) -> Path:
    return Path(args.params or "params.yaml").resolve()


def _no_params_file(args: argparse.Namespace) -> bool:
    """No `--params` and no ./params.yaml: no model is selected here."""
    return args.params is None and not Path("params.yaml").exists()


def _params(args: argparse.Namespace):
    """./params.yaml, or the file `--params` names; either must exist (a command never runs on defaults)."""
    from pipelines.core.config import load_params

    if _no_params_file(args):
        raise _no_model_selected(args)
    return load_params(args.params or "params.yaml")


def _workspace(args: argparse.Namespace, params, inputs=(), allow_outside: bool | None = None):
    """The output-path policy of this project (the params file's directory); see pipelines.core.paths.
    The params file in use is an input of every command. Outside the project only with
    --allow-outside-project, unless the caller allows it (a report or a key the user names)."""
    from pipelines.core.paths import Workspace

    params_file = _params_file(args)
    return Workspace.of(params, params_file.parent, inputs=[params_file, *inputs],
                        allow_outside=args.allow_outside_project if allow_outside is None else allow_outside)


def _report_file(args: argparse.Namespace, params, path: str) -> Path:
    """A report the user asked for (`--html FILE`) goes wherever they name, outside the project too,
    but never onto what the output policy protects (params, raw data, the registry, DVC, `.git`)."""
    return _workspace(args, params, allow_outside=True).check_file(path)


def _validate(args: argparse.Namespace) -> int:
    from pipelines.core.config import with_overrides
    from pipelines.stages.validate import validate

    params = _params(args)
    data = with_overrides(params.data, text_column=args.text_column, label_column=args.label_column,
                          task=args.task, pii_policy=args.pii_policy)
    path = args.path or data.raw
    ws = _workspace(args, params, inputs=[path])
    report_dir = ws.check_dir(args.report_dir or params.validate_.report_dir)
    quarantine = ws.check_file(args.quarantine or params.validate_.quarantine_path)
    if quarantine == report_dir or report_dir in quarantine.parents:
        from pipelines.core.errors import OutputError

        raise OutputError(f"refusing to write the quarantine file {quarantine} inside the report directory {report_dir}")
    validate(path, data, params.validate_, report_dir=args.report_dir, quarantine_path=args.quarantine)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from pipelines.core.config import with_overrides
    from pipelines.stages.prepare import prepare

    params = _params(args)
    data = with_overrides(params.data, text_column=args.text_column, label_column=args.label_column)
    rules = with_overrides(params.prepare, output_dir=args.output_dir, seed=args.seed)
    path = args.path or data.raw
    vr = params.validate_
    _workspace(args, params, inputs=[path, vr.report_dir, vr.quarantine_path]).check_dir(rules.output_dir)
    prepare(path, data, rules, vr)
    return 0


def _train(args: argparse.Namespace) -> int:
    from pipelines.core.config import with_overrides
    from pipelines.stages.train import train

    params = _params(args)
    tp = with_overrides(params.train, base_model=args.base_model, epochs=args.epochs, max_steps=args.max_steps,
                        output_dir=args.output_dir, learning_rate=args.learning_rate)
    ws = _workspace(args, params, inputs=[params.prepare.output_dir])
    outputs = [ws.check_dir(tp.output_dir), ws.check_dir(tp.report_dir), ws.check_dir(tp.checkpoint_dir)]
    _distinct(outputs, ("train.output_dir", "train.report_dir", "train.checkpoint_dir"))
    from pipelines.training.distributed import Dist

    # under torchrun each process is one rank of the run (its environment says which)
    train(params.model_copy(update={"train": tp}), resume=not args.no_resume, dist=Dist.from_env(os.environ))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from pipelines.core.paths import outside_experiment
    from pipelines.registry import access
    from pipelines.registry import store as registry
    from pipelines.stages.evaluate import evaluate

    params = _params(args)
    _workspace(args, params, inputs=[params.train.output_dir, params.prepare.output_dir]).check_dir(
        params.evaluate.report_dir)
    # inside `dvc exp run --queue/--temp` the git-ignored registry (and its keys) are the origin repository's
    folder = _params_file(args).parent
    rp = params.registry
    moved = {key: outside_experiment(value, folder)
             for key in ("root", "trusted_keys_file", "signing_key_file") if (value := getattr(rp, key))}
    params = params.model_copy(update={"registry": rp.model_copy(update=moved)})
    store = access.model_store(params, params.registry.model_name, folder)
    champ_dir, champ_version = registry.champion(store, params.evaluate.compare_with)
    evaluate(params, champ_dir, champ_version)
    return 0


def _gate(args: argparse.Namespace) -> int:
    from pipelines.stages.gate import run_gate

    params = _params(args)
    _workspace(args, params, inputs=[params.train.output_dir, params.evaluate.report_dir]).check_file(
        params.gate.decision_path)
    run_gate(params, exit_zero=args.exit_zero)
    return 0


def _distinct(paths, names) -> None:
    """Two outputs of one stage may not be the same directory or nest inside each other."""
    from pipelines.core.errors import OutputError

    for i, a in enumerate(paths):
        for j, b in enumerate(paths):
            if i != j and (a == b or a in b.parents):
                raise OutputError(f"{names[j]} ({b}) lies inside {names[i]} ({a}): give each output its own directory")


def _model_params(args: argparse.Namespace):
    """(params, model, folder) of the model a command names: its own `--model`, else the params'. A model
    other than the params' is read with its own folder's params, never with another model's."""
    from pipelines.core.config import check_model_name, load_params

    params = _params(args)
    folder = _params_file(args).parent
    model = check_model_name(getattr(args, "model", None) or params.registry.model_name)
    if model != params.registry.model_name:
        projects = find_projects(folder)
        own = projects / model / "params.yaml" if projects is not None else None
        if own is None or not own.is_file():
            raise ConfigError(f"--model {model}: these params are {params.registry.model_name}'s and there is no "
                              f"model folder projects/{model}/ (run `pipelines --model {model} ...`)")
        params, folder = load_params(own), own.parent
    return params, model, folder


def _store(args: argparse.Namespace, writer: bool = True):
    """The model's registry (see `registry.access`); a writer holds the signing key from this environment."""
    from pipelines.registry import access

    params, model, folder = _model_params(args)
    return params, model, access.model_store(params, model, folder, dict(os.environ) if writer else None)


def _airflow_task() -> dict[str, str | None]:
    """The Airflow task this command runs in (a BashOperator sets AIRFLOW_CTX_*), for the manifest."""
    return {"dag_id": os.environ.get("AIRFLOW_CTX_DAG_ID"), "run_id": os.environ.get("AIRFLOW_CTX_DAG_RUN_ID"),
            "task_id": os.environ.get("AIRFLOW_CTX_TASK_ID")}


def _promote(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipelines.registry import access
    from pipelines.registry import audit as lineage
    from pipelines.registry import store as registry

    params, model, folder = _model_params(args)
    store = access.model_store(params, model, folder, dict(os.environ))
    registry.init(store)
    candidate = Path(args.candidate) if args.candidate else folder / params.train.output_dir
    decision = Path(args.decision) if args.decision else folder / params.gate.decision_path
    result = registry.promote(store, model, candidate, decision, folder / params.evaluate.report_dir / "metrics.json",
                              approved_by=args.approved_by, reason=args.reason or "",
                              evidence=lineage.evidence(params, folder), root=folder, run=_airflow_task())
    _mirror(params, model, result["version"] if result["changed"] else None, args.reason or "promoted")
    return 0


def _mirror(params, model: str, version: int | None, reason: str) -> None:
    from pipelines.registry import store as registry

    if params.registry.gto_tags and version is not None:
        warning = registry.gto_mirror(model, version, reason)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)


def _rollback(args: argparse.Namespace) -> int:
    from pipelines.registry import store as registry

    params, model, store = _store(args)
    entry = registry.move_alias(store, model, "champion", args.to_version, reason=args.reason)
    _mirror(params, model, entry["version"], args.reason)
    return 0


def _keygen(args: argparse.Namespace) -> int:
    """A new Ed25519 signing key: the private key to a new file only its owner reads (where the output
    policy allows a file; outside the project too: a key belongs outside the repository), the public key
    (for `registry.trusted_keys`) on stdout."""
    from pipelines.registry import signing

    if not args.out:
        raise ConfigError("registry keygen needs --out FILE (the new private key; keep it out of the registry)")
    path = _workspace(args, _params(args), allow_outside=True).check_file(args.out)
    pem = signing.new_key_pem()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never replaces a key
    except FileExistsError:
        raise ConfigError(f"registry keygen: {path} exists; a key is never overwritten") from None
    except OSError as err:
        raise ConfigError(f"registry keygen: cannot create {path} ({err.strerror})") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    print(signing.public_key(signing.load_key(pem, str(path))))
    print(f"private key in {path}; add the public key above to registry.trusted_keys", file=sys.stderr)
    return 0


def _registry(args: argparse.Namespace) -> int:
    import json

    from pipelines.registry import store as registry

    if args.action == "keygen":
        return _keygen(args)
    _, model, store = _store(args, writer=args.action in ("init", "alias", "rotate-key"))
    if args.action == "init":
        registry.init(store)
    elif args.action == "list":
        print(registry.describe(store, model))
    elif args.action == "show":
        if args.version is None:
            raise ConfigError("registry show needs --version N")
        print(json.dumps(registry.show_version(store, args.version), indent=2, sort_keys=True))
    elif args.action == "alias":
        if not args.name or args.version is None:
            raise ConfigError("registry alias needs --name ALIAS and --version N")
        registry.move_alias(store, model, args.name, args.version, reason=args.reason or "")
    elif args.action == "rotate-key":
        from pipelines.core.config import RegistryParams

        if not args.new_key:
            raise ConfigError("registry rotate-key needs --new-key BASE64 (the public key keygen printed)")
        if not store.keys.trusted:
            raise ConfigError("registry rotate-key: this registry's ledger is not signed (registry.trusted_keys)")
        try:
            RegistryParams(trusted_keys=(args.new_key,))  # the same check as params' trusted keys
        except ValueError:
            raise ConfigError(f"registry rotate-key --new-key: {args.new_key[:16]!r} is not a base64 Ed25519 "
                              "public key (32 bytes)") from None
        entry = registry.rotate_key(store, args.new_key, retire=args.retire)
        print(f"registry {model}: key {args.new_key[:12]}... introduced at ledger entry {entry['seq']}"
              + (", the previous key retired" if args.retire else ""), file=sys.stderr)
    elif args.action == "verify":
        problems = registry.verify(store)
        if problems:
            for problem in problems[1:]:
                print(f"also: {problem}", file=sys.stderr)
            raise CheckFailed(f"registry {model} failed verification: {problems[0]}")
        signed = ", every signature" if store.keys.trusted else ""
        print(f"registry {model}: ledger chain{signed}, manifests and every file verified; the ledger holds "
              "the head its newest run kept in git (if any)", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from pipelines.core.config import with_overrides
    from pipelines.serving.app import create_app
    from pipelines.serving.engine import auth_line, server_config

    if args.all and _no_params_file(args):
        # every model brings its own params (registry, keys, fallback); the server's own settings (address,
        # limits) are the `serve` section's documented defaults and the flags, and it says so
        from pipelines.core.config import Params

        params, model, folder = Params(), None, None
        print("serve --all: no params file here: the server's own settings are the serve section's defaults "
              "and the flags (--params FILE to choose them)", file=sys.stderr, flush=True)
    else:
        params, model, folder = _model_params(args) if not args.all else (_params(args), None, None)
    sp = with_overrides(params.serve, host=args.host, port=args.port, alias=args.alias,
                        allow_unauthenticated=args.allow_unauthenticated or None)
    params = params.model_copy(update={"serve": sp})
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    models, folders, broken = _every_model() if args.all else ({model: params}, {model: folder}, {})
    app = create_app(params, alias=sp.alias, batching=not args.no_batching, models=models, folders=folders,
                     broken=broken)
    print(auth_line(app.state.model_keys, sp.host, sp.allow_unauthenticated), file=sys.stderr, flush=True)
    for name, why in app.state.broken.items():
        print(f"warning: not serving {name}: {why}", file=sys.stderr, flush=True)
    uvicorn.Server(server_config(app, sp, sp.host, sp.port)).run()
    return 0


def _every_model() -> tuple[dict, dict, dict]:
    """name -> params, name -> folder, and name -> why not, of every model folder of the checkout (one
    whose params do not load is reported and skipped, the others serve)."""
    from pathlib import Path

    from pipelines.core.config import load_params

    projects = find_projects(Path.cwd())
    if projects is None:
        raise ConfigError("serve --all: no projects/ folder with a model here or above")
    models, folders, broken = {}, {}, {}
    for path in sorted(projects.glob("*/params.yaml")):
        try:
            models[path.parent.name], folders[path.parent.name] = load_params(path), path.parent
        except PipelineError as err:
            broken[path.parent.name] = str(err)
    return models, folders, broken


def _vllm_promote(args: argparse.Namespace) -> int:
    import os

    from pipelines.registry import store as registry
    from pipelines.serving.vllm import promote_to_vllm

    params, model, store = _store(args, writer=False)
    entries = registry.read_ledger(store)
    current = registry.aliases(entries)
    if args.version is not None and args.version < 1:
        raise ConfigError(f"--version must be a registered version number (1 or more), not {args.version}")
    version = current.get("champion") if args.version is None else args.version
    if version is None:
        raise CheckFailed(f"{model} has no champion to load into vLLM")
    if version not in registry.registered(entries):
        raise CheckFailed(f"{model} has no registered version {version}")
    registry.require_intact(store, model, version, registry.registered(entries)[version])
    adapter = args.adapter_root.rstrip("/") + f"/{model}/versions/v{version:04d}/files/adapter" if args.adapter_root \
        else str(registry.version_dir(store, version) / "adapter")
    name = promote_to_vllm(args.url, model, version, adapter, os.environ.get(args.api_key_env),
                           previous=current.get("previous"))
    print(f"vLLM at {args.url} now serves '{name}' = {model} v{version}", file=sys.stderr)
    return 0


def _positive_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or not value > 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, not {text}")
    return value


def _level_seconds(text: str) -> float:
    value = _positive_float(text)
    if value > 600:
        raise argparse.ArgumentTypeError(f"at most 600 seconds per load level, not {text}")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], not {text}")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number > 0, not {text!r}")
    return int(text)


def _cost_folders(args: argparse.Namespace) -> list:
    """(name, folder, params) of the model this command runs in, or of every model of the checkout."""
    from pathlib import Path

    from pipelines.core.config import check_model_name, load_params

    if not _no_params_file(args):
        params = _params(args)
        if args.model and args.model != params.registry.model_name:
            check_model_name(args.model)
            raise ConfigError(f"--model {args.model}: these params are {params.registry.model_name}'s; run from the "
                              f"checkout's root, or `pipelines --model {args.model} ...`")
        return [(params.registry.model_name, Path.cwd(), params)]
    projects = find_projects(Path.cwd())
    if projects is None:
        raise ConfigError("cost: no params.yaml here and no projects/ folder with a model here or above")
    return [(p.parent.name, p.parent, load_params(p)) for p in sorted(projects.glob("*/params.yaml"))]


def _git_remote() -> str:
    """Where the lifecycle run records live: PIPELINES_GIT_REMOTE, else this checkout."""
    from pathlib import Path

    projects = find_projects(Path.cwd())
    return os.environ.get("PIPELINES_GIT_REMOTE") or str(projects.parent if projects else Path.cwd())


def _run_costs(args: argparse.Namespace) -> int:
    """Every lifecycle run's compute cost, per model (from the run records in the git remote)."""
    import json

    from pipelines.orchestration import records

    remote = _git_remote()
    out = []
    for name, _folder, _params in _cost_folders(args):
        runs = [{"run_id": r.get("run_id"), **{k: (r.get("compute") or {}).get(k)
                                                for k in ("usd", "seconds", "trained_tokens")}, "note": r.get("note")}
                for r in records.list_runs(remote, name, limit=1000)]
        known = [r["usd"] for r in runs if isinstance(r["usd"], (int, float))]
        out.append({"model": name, "runs": runs, "usd": sum(known), "runs_without_cost": len(runs) - len(known)})
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for m in out:
        print(f"{m['model']}: {len(m['runs'])} run(s), ${m['usd']:.4f} of compute"
              + (f" ({m['runs_without_cost']} without a cost: unfinished, or older than cost records)"
                 if m["runs_without_cost"] else ""))
        for r in m["runs"]:
            spent = f"${r['usd']:.4f} {r['seconds']:>7.0f} s" if r["usd"] is not None else "unknown".rjust(17)
            spent += f" {r['trained_tokens']:>11,} tokens trained" if r["trained_tokens"] else " " * 26
            print(f"  {spent}  {r['run_id']}  {(r['note'] or '').split('; compute')[0][:90]}")
    return 0


def _cost(args: argparse.Namespace) -> int:
    """Self-hosted against API, per served champion, from its measured capacity on this machine; each
    known comparison is also drawn (reports/cost/volume.svg)."""
    import json

    if args.runs:
        return _run_costs(args)

    from pipelines.serving import capacity

    reports = []
    for name, folder, params in _cost_folders(args):
        if args.hardware and args.hardware not in params.cost.hardware:
            raise ConfigError(f"--hardware: unknown hardware kind {args.hardware!r} "
                              f"(priced: {', '.join(sorted(params.cost.hardware))})")
        reports.append(capacity.report(name, folder, params, args.hardware, args.volume,
                                       measure_seconds=args.seconds if args.measure else None))
        if "rows" in reports[-1]:
            capacity.write_plot(folder, reports[-1])
    if args.json:
        print(json.dumps(reports, indent=2, default=str))
    else:
        print("\n\n".join(capacity.table(r) for r in reports))
    return 0


def _route_tune(args: argparse.Namespace) -> int:
    """Each served classifier's cost-quality frontier, the threshold chosen on it and the one serving uses."""
    import json

    from pipelines.serving import route_tune

    docs = []
    for name, folder, params in _cost_folders(args):
        doc = route_tune.report(name, folder, params, args.upstream_accuracy, args.min_accuracy, args.sample)
        if "frontier" in doc:
            route_tune.write(folder, doc)
        docs.append(doc)
    print(json.dumps(docs, indent=2, default=str) if args.json else "\n\n".join(route_tune.table(d) for d in docs))
    return 0


def _lineage(args: argparse.Namespace) -> int:
    import json

    from pipelines.registry import audit as lineage

    params, model, folder = _model_params(args)
    html_path = _report_file(args, params, args.html) if args.html else None
    chain = lineage.trace(params, model, alias=None if args.version else args.alias, version=args.version, root=folder)
    if html_path:
        from pipelines.core.dataio import atomic_write_text

        atomic_write_text(html_path, lineage.render_html(chain))
    if args.json:
        print(json.dumps(chain, indent=2, default=str))
    else:
        for link in chain["links"]:
            print(f"{link['status']:>8}  {link['step']:<13} {link['detail']}")
    if not chain["verified"]:
        bad = [f"{link['step']} {link['status']}: {link['detail']}" for link in chain["links"] if link["status"] != "ok"]
        raise CheckFailed(f"lineage of {chain['model']} v{chain['version']} NOT verified: {bad[0]}"
                          + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""))
    print(f"lineage of {chain['model']} v{chain['version']} verified", file=sys.stderr)
    return 0


def _audit(args: argparse.Namespace) -> int:
    """Every decision about one model in a period, the rejected candidates, and each served version's
    evidence and lineage re-verified: for people, as JSON, or as a page to file."""
    import json

    from pipelines.core.config import check_model_name
    from pipelines.orchestration import records
    from pipelines.registry import audit_report

    folders = _cost_folders(args)
    known = ", ".join(name for name, _, _ in folders)
    if args.model and [name for name, _, _ in folders] != [args.model]:
        raise ConfigError(f"audit: no model folder projects/{check_model_name(args.model)}/ (models: {known})")
    if len(folders) != 1:
        raise ConfigError(f"audit: name the model: --model NAME (models: {known})")
    name, folder, params = folders[0]
    html_path = _report_file(args, params, args.html) if args.html else None
    report = audit_report.build(params, name, folder, records.list_runs(_git_remote(), name, limit=10_000),
                                args.since)
    if html_path:
        from pipelines.core.dataio import atomic_write_text

        atomic_write_text(html_path, audit_report.render_html(report))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(f"{name}: {len(report['decisions'])} decision(s), {len(report['rejected'])} rejected candidate(s)"
          f"{' since ' + report['since'] if report['since'] else ''}; champion v{report['champion']}")
    for d in report["decisions"]:
        print(f"  {d['at']}  {d['what']} v{d['version']} by {d['by']}"
              f"{' (approved by ' + d['approved_by'] + ')' if d['approved_by'] else ''}: {d['reason']}")
    for x in report["rejected"]:
        print(f"  {x['at']}  rejected {str(x['candidate'])[:12]} ({x['run_id']}): "
              f"{'rejected by ' + x['rejected_by'] if x['rejected_by'] else x['reasons']}")
    for v in report["versions"]:
        print(f"  v{v['version']}: lineage {'verified' if v['verified'] else 'BROKEN: ' + str(v['broken'][:1])}")
    return 0


def _iso_date(text: str):
    from datetime import date

    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _sample(args: argparse.Namespace) -> int:
    from pipelines.devtools.sample_data import write_sample

    ws = _workspace(args, _params(args))  # a drop may go into the raw data, never onto what is protected
    (ws.check_file if Path(args.out).suffix else ws.check_dir)(args.out, may_be=("the raw data",))
    path = write_sample(args.out, rows=args.rows, seed=args.seed, faulty=args.faulty, fmt=args.format,
                        domain=args.domain, mislabelled=args.mislabelled, label_noise=args.label_noise)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _init(args: argparse.Namespace) -> int:
    """A model folder from the user's own data file: checked, columns stated (and confirmed on a terminal),
    written in one rename, then the next commands."""
    from pipelines.devtools.onboarding import scaffold

    projects = find_projects(Path.cwd())
    if projects is None:
        raise ConfigError("init: no projects/ folder with a model here or above (run it in the platform's checkout)")
    named = {"text": args.text_column, "label": args.label_column, "prompt": args.prompt_column,
             "response": args.response_column}
    plan = scaffold.plan(projects, args.name, Path(args.data), args.task, named, args.like, args.holdout_share)
    print(f"{plan.name}: {plan.columns.task}; {plan.columns.describe()}", file=sys.stderr)
    if sys.stdin.isatty() and not args.yes and input("write projects/{}/ with these columns? [Y/n] ".format(
            plan.name)).strip().lower() not in ("", "y", "yes"):
        raise ConfigError("init: not confirmed; nothing written (name the columns with --text-column/--label-column)")
    folder = scaffold.write(plan)
    print(scaffold.summary(plan, folder.relative_to(projects.parent)))
    return 0


def _step(args: argparse.Namespace) -> int:
    """One lifecycle step outside Airflow's Python workers (a Kubernetes pod): the shared locations
    from this process' environment, the run pointer from --run; the result as JSON."""
    import json
    from pathlib import Path

    from pipelines.core.dataio import atomic_write_text
    from pipelines.orchestration import steps
    from pipelines.orchestration.runspace import RunRef, Shared

    try:
        run = RunRef.of(json.loads(args.run))
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"--run: not a run pointer ({type(err).__name__}: {err})") from None
    env = os.environ
    if not env.get("PIPELINES_GIT_REMOTE"):
        raise ConfigError("PIPELINES_GIT_REMOTE is not set: the step needs the git remote of the platform")
    shared = Shared(env["PIPELINES_GIT_REMOTE"], env.get("PIPELINES_WORKER_CACHE", "/work/dvc-cache"),
                    env.get("PIPELINES_SCRATCH", "/work/scratch"), env.get("PIPELINES_DVC_REMOTE") or None)
    result = steps.run_stage(shared, run, args.stage)
    result["worker"] = env.get("PIPELINES_WORKER_NAME", "")
    text = json.dumps(result)
    if args.xcom_file:
        Path(args.xcom_file).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.xcom_file), text)
    print(text)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pipelines.devtools.demo import run_demo

    summary = run_demo(faulty_drop=args.faulty_drop, second_run=not args.single_run, verbose=args.verbose)
    if args.json:
        import json

        print(json.dumps(summary, indent=2))
    return 0


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line like every other error (`--help` shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pipelines", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=None, help="params file (default: params.yaml; a named file must exist)")
    parser.add_argument("--model", dest="project_model", metavar="NAME", default=None,
                        help="run in the model's folder projects/NAME (default: the current directory)")
    parser.add_argument("--allow-outside-project", action="store_true",
                        help="let stages write outputs outside the project (the params file's directory)")
    sub = parser.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check a dataset against the data contract (Great Expectations)")
    v.add_argument("path", nargs="?", help="file or directory of drops (default: data.raw)")
    v.add_argument("--text-column")
    v.add_argument("--label-column")
    v.add_argument("--task", choices=task_names())
    v.add_argument("--pii-policy", choices=["fail", "redact"])
    v.add_argument("--report-dir", help="where result.json and data_docs/ go (default: validate.report_dir)")
    v.add_argument("--quarantine", help="quarantine JSONL path (default: validate.quarantine_path)")
    v.set_defaults(handler=_validate)

    p = sub.add_parser("prepare", help="normalise, dedupe, redact, split into Parquet with a data card")
    p.add_argument("path", nargs="?", help="file or directory of drops (default: data.raw)")
    p.add_argument("--text-column")
    p.add_argument("--label-column")
    p.add_argument("--output-dir")
    p.add_argument("--seed", type=int)
    p.set_defaults(handler=_prepare)

    t = sub.add_parser("train", help="LoRA/QLoRA fine-tuning on the prepared splits")
    t.add_argument("--base-model", help="'minilm', a local model dir or a cached hub id")
    t.add_argument("--epochs", type=int)
    t.add_argument("--max-steps", type=int)
    t.add_argument("--learning-rate", type=float)
    t.add_argument("--output-dir")
    t.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    t.set_defaults(handler=_train)

    e = sub.add_parser("evaluate", help="score the candidate and the champion on the test split")
    e.set_defaults(handler=_evaluate)

    g = sub.add_parser("gate", help="apply the promotion policy; exit 1 when the candidate fails")
    g.add_argument("--exit-zero", action="store_true",
                   help="exit 0 on a rejection too (the decision file says it; the lifecycle reads it)")
    g.set_defaults(handler=_gate)

    pr = sub.add_parser("promote", help="register the candidate and make it champion (needs a passing gate)")
    pr.add_argument("--model", help="registry model name (default: registry.model_name)")
    pr.add_argument("--candidate", help="candidate dir (default: train.output_dir)")
    pr.add_argument("--decision", help="gate decision (default: gate.decision_path)")
    pr.add_argument("--approved-by", help="record a human approval")
    pr.add_argument("--reason")
    pr.set_defaults(handler=_promote)

    rb = sub.add_parser("rollback", help="move champion back to previous (or --to-version N)")
    rb.add_argument("--model")
    rb.add_argument("--to-version", type=int)
    rb.add_argument("--reason", required=True, help="why: recorded in the ledger")
    rb.set_defaults(handler=_rollback)

    rg = sub.add_parser("registry", help="inspect and verify the model registry")
    rg.add_argument("action", choices=["init", "list", "show", "verify", "alias", "keygen", "rotate-key"])
    rg.add_argument("--model")
    rg.add_argument("--version", type=int)
    rg.add_argument("--name", help="alias name (for `alias`)")
    rg.add_argument("--reason")
    rg.add_argument("--out", help="keygen: where to write the new private key (PEM, mode 0600; never in the registry)")
    rg.add_argument("--new-key", help="rotate-key: the new base64 public key (what keygen printed)")
    rg.add_argument("--retire", action="store_true", help="rotate-key: the current key signs nothing after")
    rg.set_defaults(handler=_registry)

    sv = sub.add_parser("serve", help="serve the version a registry alias points at (OpenAI-compatible)")
    sv.add_argument("--model", help="registry model name (default: registry.model_name)")
    sv.add_argument("--alias", help="alias to follow (default: serve.alias, champion)")
    sv.add_argument("--host")
    sv.add_argument("--port", type=int)
    sv.add_argument("--all", action="store_true",
                    help="serve every model folder's alias in one server, chosen by the request's `model` field")
    sv.add_argument("--no-batching", action="store_true", help="one request, one forward pass (baseline)")
    sv.add_argument("--allow-unauthenticated", action="store_true",
                    help="serve without API keys on a non-loopback address (behind an authenticating proxy)")
    sv.set_defaults(handler=_serve)

    vp = sub.add_parser("vllm-promote", help="load the champion's adapter into a running vLLM server")
    vp.add_argument("--url", required=True, help="vLLM base URL, e.g. http://gpu-node:8001")
    vp.add_argument("--model")
    vp.add_argument("--version", type=int, help="default: the champion")
    vp.add_argument("--adapter-root", help="the registry root as the vLLM host mounts it (default: local path)")
    vp.add_argument("--api-key-env", default="VLLM_API_KEY")
    vp.set_defaults(handler=_vllm_promote)

    co = sub.add_parser("cost", help="self-hosted against API prices: cost per 1k requests, ratio, break-even volume")
    co.add_argument("--model", default=None, help="one model (default: every model of the checkout)")
    co.add_argument("--measure", action="store_true",
                    help="serve the champion on loopback and measure its capacity first (kept in reports/cost/)")
    co.add_argument("--seconds", type=_level_seconds, default=5.0,
                    help="length of each load level (--measure; at most 600)")
    co.add_argument("--hardware", default=None, help="price this machine as that kind (default: cost.serve_on)")
    co.add_argument("--volume", type=_positive_int, default=None, help="requests a month for the monthly bills")
    co.add_argument("--runs", action="store_true", help="instead: every lifecycle run's compute cost")
    co.add_argument("--json", action="store_true")
    co.set_defaults(handler=_cost)
    ro = sub.add_parser("route", help="hybrid routing").add_subparsers(dest="route_command", required=True)
    rt = ro.add_parser("tune", help="the champion's cost-quality frontier: share upstream, accuracy, $ per threshold")
    rt.add_argument("--model", default=None, help="one model (default: every model of the checkout)")
    given = rt.add_mutually_exclusive_group()
    given.add_argument("--upstream-accuracy", type=_share, default=None, help="instead of route.upstream_accuracy")
    given.add_argument("--sample", type=_positive_int, default=None, metavar="N",
                       help="measure it: ask serve.fallback's upstream to classify N labelled raw rows (no PII sent)")
    rt.add_argument("--min-accuracy", type=_share, default=None, help="instead of route.min_accuracy")
    rt.add_argument("--json", action="store_true")
    rt.set_defaults(handler=_route_tune)
    ln = sub.add_parser("lineage", help="the audit chain of a served version, every hash re-checked")
    ln.add_argument("--model", default=None)
    which = ln.add_mutually_exclusive_group()
    which.add_argument("--alias", default="champion")
    which.add_argument("--version", type=int, default=None)
    ln.add_argument("--json", action="store_true", help="print the chain as JSON (with \"verified\")")
    ln.add_argument("--html", default=None, metavar="FILE", help="also write the chain as an HTML page")
    ln.set_defaults(handler=_lineage)

    au = sub.add_parser("audit", help="a model's decisions, rejected candidates and verified lineage in a period")
    au.add_argument("--model", default=None, help="the model (needed at the checkout's root)")
    au.add_argument("--since", type=_iso_date, default=None, help="first day of the period (YYYY-MM-DD, UTC)")
    au.add_argument("--html", default=None, metavar="FILE", help="also write the report as a page to file")
    au.add_argument("--json", action="store_true")
    au.set_defaults(handler=_audit)
    ms = sub.add_parser("models", help="every model of the platform: folder, DAG, champion, newest run")
    ms.add_argument("--json", action="store_true")
    ms.set_defaults(handler=_models)

    s = sub.add_parser("sample", help="write a deterministic sample dataset (a weekly drop)")
    s.add_argument("--out", default="data/raw", help="directory (a drop file is written in it) or file path")
    s.add_argument("--rows", type=_positive_int, default=2000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--format", choices=["csv", "jsonl", "parquet"], default="csv")
    s.add_argument("--faulty", action="store_true", help="plant contract violations (validation stops the run)")
    s.add_argument("--mislabelled", action="store_true", help="a labelling accident that passes validation: one "
                   "intent's surge tagged as its neighbour (the gate rejects a model trained on it)")
    s.add_argument("--label-noise", type=float, default=None, metavar="SHARE",
                   help="share of rows with a wrong label at random (default 0.03; 0 for a reviewed holdout)")
    s.add_argument("--domain", choices=get_args(LifecycleParams.model_fields["sample_domain"].annotation),
                   default="banking", help="which generated data (each model of the platform has its own; "
                   "support_assistant: prompt/response rows for a generative model)")
    s.set_defaults(handler=_sample)

    it = sub.add_parser("init", help="a new model folder from your own data file (checked, columns inferred)")
    it.add_argument("name", help="the model's name: its folder projects/NAME and its DAG lifecycle__NAME")
    it.add_argument("--data", required=True, help="a CSV, JSONL or Parquet file")
    it.add_argument("--task", choices=["classification", "causal_lm"], help="default: inferred from the columns")
    it.add_argument("--text-column", help="classification: the input text (default: inferred)")
    it.add_argument("--label-column", help="classification: the target (default: inferred)")
    it.add_argument("--prompt-column", help="causal_lm: the prompt (default: inferred)")
    it.add_argument("--response-column", help="causal_lm: the answer (default: inferred)")
    it.add_argument("--like", help="the model folder whose params to start from (default: text-classifier or "
                                   "support-assistant, by task)")
    it.add_argument("--holdout-share", type=float, default=0.1,
                    help="share of each label carved out as the holdout a person reviews (default 0.1)")
    it.add_argument("--yes", action="store_true", help="do not ask to confirm the columns on a terminal")
    it.set_defaults(handler=_init)

    st = sub.add_parser("step", help="run one stage task of a lifecycle run (what a Kubernetes pod runs)")
    st.add_argument("stage", choices=["validate", "prepare", "train", "evaluate"])
    st.add_argument("--run", required=True, help="the run pointer (the previous task's XCom, JSON)")
    st.add_argument("--xcom-file", help="also write the result here (KubernetesPodOperator: /airflow/xcom/return.json)")
    st.set_defaults(handler=_step)

    d = sub.add_parser("demo", help="the main job on the embedded default: each model's lifecycle DAG "
                                    "(a promotion and a rejection per classifier), then serve and verify lineage")
    d.add_argument("--faulty-drop", action="store_true", help="also add a faulty drop and show validate stop the run")
    d.add_argument("--single-run", action="store_true", help="only each model's first run")
    d.add_argument("--verbose", action="store_true", help="show Airflow's log lines as they come (else: in a file)")
    d.add_argument("--json", action="store_true", help="also print the summary as JSON on stdout")
    d.set_defaults(handler=_demo)
    return parser


_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _enter_project(args)
        return args.handler(args)
    except BrokenPipeError:  # `pipelines registry list | head`: the reader left; not an error of ours
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # the machine's state, not a bug: a full disk, a file too large, no permission
        if err.errno not in _ENVIRONMENT_ERRNOS:
            return _internal_error(args, err)
        where = f" ({err.filename})" if err.filename else ""
        print(f"error: {err.strerror or os.strerror(err.errno)}{where}; writes are atomic: nothing was "
              "half-written", file=sys.stderr)
        return 2
    except Exception as err:
        return _internal_error(args, err)


def _internal_error(args: argparse.Namespace, err: Exception) -> int:
    """A bug, not bad input: still one line, the traceback on request."""
    if os.environ.get("PIPELINES_DEBUG"):
        raise err
    print(f"error: internal error in '{args.command}': {type(err).__name__}: {err} "
          "(set PIPELINES_DEBUG=1 for the traceback)", file=sys.stderr)
    return 3


if __name__ == "__main__":
    raise SystemExit(main())
