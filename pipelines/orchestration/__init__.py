"""Orchestration: how a lifecycle run's tasks run anywhere (no Airflow imports here).

- `runconf`: a run's form values, re-checked against the model's params and applied in its workspace.
- `gitops`: the few git operations a task needs (fetch a run's commit, commit, push a ref).
- `runspace`: the shared locations (`Shared`), the run's pointer (`RunRef`) and a task's disposable
  workspace (a checkout of the run's commit, DVC pointed at the shared remote and this worker's cache).
- `records`: the run's record, kept in the run's own commits (readable from the git remote anywhere).
- `steps`: one function per DAG task.
"""
