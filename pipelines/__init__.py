"""LLMOps pipeline stages: importable, Airflow-free logic behind every DAG task and DVC stage.

Each stage is one module with a typed core function, a `pipelines <stage>` CLI subcommand
(see `cli.py`) and a `dvc.yaml` stage running that subcommand.
"""
__version__ = "0.1.0"
