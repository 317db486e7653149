"""LLMOps pipelines: importable, Airflow-free logic behind every DAG task and DVC stage.

One folder per layer (tasks, core, training, inference, stages, registry, serving, orchestration,
devtools); each stage is one module of `stages/` with a typed core function, a `pipelines <stage>`
CLI subcommand (see `cli.py`) and a `dvc.yaml` stage running that subcommand.
"""
__version__ = "0.1.0"
