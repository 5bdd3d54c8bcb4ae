"""MLflow logging of a sweep from the Tune driver: one child run per trial, live; and the
trials table built from Tune's results afterwards.

Every write happens in the process that runs the Tune controller, so an embedded SQLite
tracking store has a single writer however many trials run at once (trials in Ray workers
never open the database, and need not know its URI). Per-round metrics are buffered and
written in batches.

Imported lazily by :mod:`mlplatform.training.tuning` (it imports Ray Tune).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune

from mlplatform.training.config import TrainConfig
from mlplatform.training.search_space import to_python
from mlplatform.training.tracking import flat_params

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "mlplatform.trial_id"
#: Prefix of the metrics a trial reports for the model it keeps (see ``tuning.report_round``).
FINAL_PREFIX = "final_"
_FLUSH_AT = 500  # buffered metric values before a write (MLflow's log_batch takes 1000)


class TrialRunLogger(tune.Callback):
    """A Tune callback: a child run under ``parent_run_id`` per trial.

    Child runs get the trial's effective settings as params, the reported ``val_*`` metrics
    per round (step = round), and at the end the kept model's metrics (``final_val_*``),
    ``rounds`` and ``best_round``, and a tag saying whether the scheduler stopped the trial.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str,
                 base_params: dict[str, Any], tags: dict[str, str] | None = None):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.base_params = base_params
        self.tags = tags or {}
        self.run_ids: dict[str, str] = {}
        self._pending: dict[str, list] = {}
        self._client = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config (callbacks included) into the experiment folder.
        return {**self.__dict__, "_client": None, "_pending": {}}

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        run = self.client.create_run(
            self.experiment_id, run_name=trial.trial_id,
            tags={PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial.trial_id, **self.tags})
        self.run_ids[trial.trial_id] = run.info.run_id
        from mlflow.entities import Param

        params = flat_params({**self.base_params,
                              **{k: to_python(v) for k, v in trial.config.items()}})
        self.client.log_batch(run.info.run_id,
                              params=[Param(k, str(v)) for k, v in params.items()])
        self._pending[trial.trial_id] = []

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(result.get("rounds", 0))
        pending = self._pending.setdefault(trial.trial_id, [])
        pending.extend(Metric(k, float(v), now, step) for k, v in result.items()
                       if k.startswith("val_") and _is_number(v))
        if len(pending) >= _FLUSH_AT:
            self._flush(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._finish(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._finish(trial, "FAILED")

    def _finish(self, trial, status: str) -> None:
        from mlflow.entities import Metric

        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        last = trial.last_result or {}
        now = int(time.time() * 1000)
        final = {k: v for k, v in last.items() if k.startswith(FINAL_PREFIX) and _is_number(v)}
        for key in ("rounds", "best_round"):
            if _is_number(last.get(key)):
                final[key] = last[key]
        self._pending.setdefault(trial.trial_id, []).extend(
            Metric(k, float(v), now, 0) for k, v in final.items())
        self._flush(trial.trial_id)
        stopped = status == "FINISHED" and not last.get("finished", False)
        tags = {"mlplatform.stopped_early": str(stopped).lower()}
        if status == "FAILED":
            tags["mlplatform.error"] = _error_text(trial)
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)
        self.client.set_terminated(run_id, status)

    def _flush(self, trial_id: str) -> None:
        pending = self._pending.get(trial_id) or []
        run_id = self.run_ids.get(trial_id)
        for start in range(0, len(pending), 1000):
            self.client.log_batch(run_id, metrics=pending[start:start + 1000])
        self._pending[trial_id] = []


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _error_text(trial) -> str:
    """The first line of the trial's error (MLflow tags hold at most 8000 characters)."""
    text = ""
    try:
        path = trial.error_file
        if path:
            with open(path) as f:
                text = f.read()
    except (OSError, AttributeError):
        pass
    return (text.strip().splitlines() or ["trial failed (see the Tune output)"])[-1][:2000]


# ------------------------------------------------------------------ after the sweep
def results_frame(grid, keys: list[str], metric: str, mode: str,
                  run_ids: dict[str, str]) -> pd.DataFrame:
    """One row per trial of a Tune ``ResultGrid``, sorted by ``metric`` (best first, failed
    trials last); the metric columns are the kept model's (``final_*`` reported values)."""
    rows = []
    for res in grid:
        m = res.metrics or {}
        trial_id = m.get("trial_id") or Path(res.path).name
        status = ("error" if res.error is not None
                  else "completed" if m.get("finished") else "stopped_early")
        rows.append({
            "trial_id": trial_id, "run_id": run_ids.get(trial_id),
            **{k: to_python(res.config.get(k)) for k in keys},
            **{k[len("final_"):]: v for k, v in m.items() if k.startswith("final_")},
            "rounds": int(m.get("rounds", 0)), "best_round": m.get("best_round"),
            "stopped_early": status == "stopped_early", "status": status,
            "error": error_line(res.error) if res.error is not None else None,
            "time_s": m.get("time_total_s")})
    df = pd.DataFrame(rows)
    if metric not in df:
        df[metric] = float("nan")
    scores = [metric, *sorted(c for c in df if c.startswith("val_") and c != metric)]
    first = ["trial_id", "run_id", *keys, *scores]
    df = df[first + [c for c in df if c not in first]]
    return df.sort_values(metric, ascending=mode == "min", na_position="last",
                          kind="stable").reset_index(drop=True)


def best_with_model(df: pd.DataFrame, grid):
    """The best-ranked trial that finished with a model, and its checkpoint."""
    checkpoints = {(r.metrics or {}).get("trial_id"): r.checkpoint for r in grid}
    for _, row in df.iterrows():
        if row["status"] == "completed" and checkpoints.get(row["trial_id"]) is not None:
            return row, checkpoints[row["trial_id"]]
    return None


def child_runs(client, experiment_id: str, parent_id: str) -> dict[str, str]:
    """trial id -> MLflow run id of the sweep's child runs."""
    runs = client.search_runs([experiment_id], max_results=50_000,
                              filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'")
    return {r.data.tags.get(TRIAL_TAG): r.info.run_id for r in runs}


def lineage_tags(config: TrainConfig, features_path: Path, name: str) -> dict[str, str]:
    """The parent run's tags: sweep name, trainer, training set and its feature versions,
    git commit, and the config's own tags."""
    from mlplatform import _mlflow
    from mlplatform.features.training_set import read_training_set_manifest

    lineage = read_training_set_manifest(features_path)
    tags = {"mlplatform.sweep": name, "mlplatform.trainer": f"{config.model}-sweep",
            "features_path": str(features_path),
            **{f"feature_version.{v}": ver
               for v, ver in lineage.get("feature_versions", {}).items()}}
    commit = _mlflow.git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return {**tags, **config.tags}


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    """Log params in batches (lists/dicts as JSON, values cut to MLflow's 6000 characters)."""
    from mlflow.entities import Param

    from mlplatform.training.tracking import flat_params

    items = [Param(k, str(v)[:6000]) for k, v in flat_params(params).items() if v is not None]
    for start in range(0, len(items), 100):  # MLflow's log_batch takes 100 params
        client.log_batch(run_id, params=items[start:start + 100])


def metrics(values: dict[str, float]) -> list:
    """MLflow ``Metric`` entities (step 0, now) for ``log_batch``."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0) for k, v in values.items()]


def error_line(error: BaseException) -> str:
    """The line of an exception's text that says what went wrong (its last)."""
    lines = [ln for ln in str(error).strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else type(error).__name__
