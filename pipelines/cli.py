"""The `pipelines` command: one subcommand per stage, configuration from params.yaml.

Inputs: argv and params.yaml (`--params` to choose another file). Outputs: whatever the stage
writes; exit 0 on success, 1 when the data fails its checks, 2 for unreadable input or bad
configuration. Known errors print one line `error: ...` on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from pipelines.errors import PipelineError

Handler = Callable[[argparse.Namespace], int]


def _validate(args: argparse.Namespace) -> int:
    from pipelines.config import load_params, with_overrides
    from pipelines.validate import validate

    params = load_params(args.params)
    data = with_overrides(params.data, text_column=args.text_column, label_column=args.label_column,
                          task=args.task, pii_policy=args.pii_policy)
    validate(args.path or data.raw, data, params.validate_, report_dir=args.report_dir,
             quarantine_path=args.quarantine)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from pipelines.config import load_params, with_overrides
    from pipelines.prepare import prepare

    params = load_params(args.params)
    data = with_overrides(params.data, text_column=args.text_column, label_column=args.label_column)
    rules = with_overrides(params.prepare, output_dir=args.output_dir, seed=args.seed)
    prepare(args.path or data.raw, data, rules, params.validate_)
    return 0


def _train(args: argparse.Namespace) -> int:
    from pipelines.config import load_params, with_overrides
    from pipelines.train import train

    params = load_params(args.params)
    tp = with_overrides(params.train, base_model=args.base_model, epochs=args.epochs, max_steps=args.max_steps,
                        output_dir=args.output_dir, learning_rate=args.learning_rate)
    train(params.model_copy(update={"train": tp}), resume=not args.no_resume)
    return 0


def _sample(args: argparse.Namespace) -> int:
    from pipelines.sample_data import write_sample

    path = write_sample(args.out, rows=args.rows, seed=args.seed, faulty=args.faulty, fmt=args.format)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    run_demo(faulty_drop=args.faulty_drop)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipelines", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check a dataset against the data contract (Great Expectations)")
    v.add_argument("path", nargs="?", help="file or directory of drops (default: data.raw)")
    v.add_argument("--text-column")
    v.add_argument("--label-column")
    v.add_argument("--task", choices=["classification", "causal_lm"])
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

    s = sub.add_parser("sample", help="write a deterministic sample dataset (a weekly drop)")
    s.add_argument("--out", default="data/raw", help="directory (a drop file is written in it) or file path")
    s.add_argument("--rows", type=int, default=2000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--format", choices=["csv", "jsonl", "parquet"], default="csv")
    s.add_argument("--faulty", action="store_true", help="plant contract violations (for gate demos)")
    s.set_defaults(handler=_sample)

    d = sub.add_parser("demo", help="the main job on the embedded default (sample data -> dvc repro)")
    d.add_argument("--faulty-drop", action="store_true", help="also add a faulty drop and show the gate stop it")
    d.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not bad input: still one line, traceback on request
        if os.environ.get("PIPELINES_DEBUG"):
            raise
        print(f"error: internal error in '{args.command}': {type(err).__name__}: {err} "
              "(set PIPELINES_DEBUG=1 for the traceback)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    raise SystemExit(main())
