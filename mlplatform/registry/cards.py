"""Model cards: what MLflow knows about one registered model version, as Markdown and HTML.

A card gathers the version's intended use, training data and feature versions, metrics overall
and by slice, behavioural test results, SHAP importance, limitations and lineage. Slice
metrics and behavioural checks come from a holdout evaluation report
(:func:`mlplatform.training.evaluation.evaluate`) stored on the version's training run as
``registry/evaluation_v<version>.json``. The card is written under
``<storage_root>/model_cards/<name>/v<version>/``, logged to the run under
``model_card/v<version>/`` and pointed to by the version tag ``model_card``.
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlplatform.config import PlatformConfig
from mlplatform.errors import ConfigError, ModelNotFound
from mlplatform.registry.registry import check_model_name

#: Slices with fewer holdout rows than this are flagged as too small to trust.
MIN_SLICE_ROWS = 100
#: Slices whose recall is below this fraction of the overall recall are flagged.
RECALL_RATIO = 0.5
#: Features listed in the SHAP section.
TOP_FEATURES = 10
_SHAP_JSON = "explain/shap_importance.json"
_OVERALL = {
    "binary": ("rows", "positives", "auc_pr", "auc_roc", "log_loss", "brier", "precision",
               "recall", "f1", "flagged_share"),
    "multiclass": ("rows", "accuracy", "log_loss", "brier", "macro_f1", "weighted_f1"),
    "regression": ("rows", "rmse", "mae", "r2", "mape", "median_absolute_error", "mean_error"),
}
_SLICE_COLS = {
    "binary": ("rows", "positives", "auc_pr", "auc_roc", "precision", "recall",
               "flagged_share"),
    "multiclass": ("rows", "accuracy", "log_loss", "macro_f1"),
    "regression": ("rows", "rmse", "mae", "r2", "mean_error"),
}
_VAL_METRICS = ("val_auc_pr", "val_auc_roc", "val_logloss", "val_accuracy", "val_error",
                "val_rmse", "val_mae")
_SOURCES = {"run": "from the training run", "given": "given by the caller",
            "max_f1": "at maximal F1 on this data"}
_SPLIT_PARAMS = ("split", "split_cutoff", "split_u_cutoff", "split_min", "split_max",
                 "train_rows", "validation_rows")


def _check_name(name: str) -> None:
    """Refuse a model name that could escape the card folder or break an MLflow URI (the
    registry's rule: :func:`mlplatform.registry.registry.check_model_name`).

    Raises:
        ConfigError: Naming the name and the rule.
    """
    try:
        check_model_name(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _version_run(config: PlatformConfig, name: str, version: str | int):
    """The platform's ``ModelVersion`` for ``name/version``; raises ModelNotFound."""
    from mlplatform.registry.registry import ModelRegistry

    _check_name(name)
    return ModelRegistry(config).resolve(f"{name}/{version}")


def store_evaluation(config: PlatformConfig, name: str, version: str | int,
                     report: dict[str, Any]) -> None:
    """Store an :func:`~mlplatform.training.evaluation.evaluate` report on the version's run.

    Args:
        config: Where MLflow lives.
        name: Registered model name.
        version: Its version.
        report: The evaluation report (JSON-serialisable; numpy scalars are converted).

    Raises:
        ConfigError: Invalid model name.
        ModelNotFound: The version does not exist or has no training run to store it on.
    """
    from mlplatform import _mlflow

    mv = _version_run(config, name, version)
    if not mv.run_id:
        raise ModelNotFound(f"model '{name}' version {mv.version} has no MLflow run: its "
                            "evaluation cannot be stored. Register models from a training run.")
    text = json.dumps(report, indent=1, default=_jsonable)
    _mlflow.client(config).log_text(mv.run_id, text, f"registry/evaluation_v{mv.version}.json")


def load_evaluation(config: PlatformConfig, name: str, version: str | int) -> dict | None:
    """The stored evaluation report of ``name/version``, or None if it was never evaluated.

    Raises:
        ConfigError: Invalid model name.
        ModelNotFound: The version does not exist.
    """
    mv = _version_run(config, name, version)
    return _run_json(config, mv.run_id, f"registry/evaluation_v{mv.version}.json")


def generate_model_card(name: str, version: str | int, config: PlatformConfig | None = None,
                        dataset=None, project=None) -> Path:
    """Render, store and log the model card of registered model version ``name/version``.

    Args:
        name: Registered model name.
        version: Its version.
        config: Where MLflow and the storage root live (default ``PlatformConfig.load()``).
        dataset: Optional labelled holdout (DataFrame, Parquet path or Ray Dataset of the
            training-set layout): evaluated first and the report stored with
            :func:`store_evaluation`. Without it the card uses the stored report, if any.
        project: The model's project (default: the one its training run names).

    Returns:
        The path of ``model_card.md`` (``model_card.html`` lies beside it).

    Raises:
        ConfigError: Invalid model name.
        ModelNotFound: The version does not exist.

    Example:
        >>> generate_model_card("churn", 1, dataset="training_sets/churn")  # doctest: +SKIP
        PosixPath('.mlplatform/model_cards/churn/v1/model_card.md')
    """
    from mlplatform import _mlflow

    config = config or PlatformConfig.load()
    mv = _version_run(config, name, version)
    if dataset is not None:
        from mlplatform.training.evaluation import evaluate

        store_evaluation(config, name, mv.version,
                         evaluate(mv.uri, dataset, platform=config, project=project))
    client = _mlflow.client(config)
    run = client.get_run(mv.run_id) if mv.run_id else None
    markdown = _render(config, client, mv, run, project)
    folder = config.path("model_cards", name, f"v{mv.version}")
    folder.mkdir(parents=True, exist_ok=True)
    md_path, html_path = folder / "model_card.md", folder / "model_card.html"
    md_path.write_text(markdown, encoding="utf-8")
    html_path.write_text(_html(markdown, f"Model card: {name} v{mv.version}"), encoding="utf-8")
    if run is not None:
        artifact_dir = f"model_card/v{mv.version}"
        for path in (md_path, html_path):
            client.log_artifact(run.info.run_id, str(path), artifact_dir)
        location = f"runs:/{run.info.run_id}/{artifact_dir}/model_card.md"
    else:  # a version registered without a run: the local file is all there is
        location = str(md_path)
    client.set_model_version_tag(name, mv.version, "model_card", location)
    return md_path


def _render(config: PlatformConfig, client, mv, run, project=None) -> str:
    """The card's Markdown."""
    from mlplatform.project import load_project
    from mlplatform.training.evaluation import run_project

    metrics = run.data.metrics if run else {}
    params = run.data.params if run else {}
    run_tags = run.data.tags if run else {}
    project = load_project(project) if project is not None else run_project(config,
                                                                               mv.run_id)
    task = run_tags.get("mlplatform.task") or (project.task.type if project else "binary")
    raw = client.get_model_version(mv.name, mv.version)
    model_desc = client.get_registered_model(mv.name).description
    threshold = metrics.get("eval_threshold")
    report = _run_json(config, mv.run_id, f"registry/evaluation_v{mv.version}.json")
    shap = _run_json(config, mv.run_id, _SHAP_JSON)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"# Model card: {_text(mv.name)} v{mv.version}", "",
           f"Generated {now} from the MLflow registry. Aliases: "
           f"{', '.join(f'`{a}`' for a in mv.aliases) or 'none'}.", "", "## Intended use", ""]
    for label, desc in (("Model", model_desc), ("This version", raw.description)):
        if desc:
            out += [f"**{label}:** {_text(desc)}", ""]
    out += [_intended_use(project, task, threshold), "",
            "Out of scope: decisions without human review where a wrong answer harms someone, "
            "and any data unlike the training data (other populations, periods or markets).",
            "", "## Training data and feature versions", ""]
    out += _table(["item", "value"], [
        ["training set", run_tags.get("features_path")],
        *([p, params.get(p)] for p in _SPLIT_PARAMS)])
    views = sorted({k.removeprefix("feature_version.") for k in (*mv.tags, *run_tags)
                    if k.startswith("feature_version.")})
    out += ["", "Feature versions (tags `feature_version.*` of the version and of the run):", ""]
    out += _table(["feature view", "version tag", "run tag"],
                  [[v, mv.tags.get(f"feature_version.{v}"), run_tags.get(f"feature_version.{v}")]
                   for v in views]) if views else ["None recorded."]
    out += ["", "## Metrics", "", "Training run, validation split:", ""]
    keys = [k for k in _VAL_METRICS if k in metrics]
    out += _table(["metric", "value"], [[k, _fmt(metrics[k])] for k in
                                        keys + sorted(k for k in metrics if k.startswith("eval_"))])
    out += ["", *_evaluation(report), "", "## Top features (SHAP)", ""]
    if shap:
        top = list(shap.get("importance", {}).items())[:TOP_FEATURES]
        out += [f"Mean |SHAP value| in {shap.get('output', 'log-odds')} over {shap.get('rows')} "
                f"validation rows ({_text(shap.get('method', ''))}); plot: "
                "`explain/shap_importance.png` on the run.", ""]
        out += _table(["rank", "feature", "mean abs SHAP"],
                      [[i, f, _fmt(v)] for i, (f, v) in enumerate(top, 1)])
    else:
        out += ["No SHAP importance was logged by the training run."]
    out += ["", "## Limitations", "", _limitations(project, task, params), *_flagged(report),
            "", "## Lineage", ""]
    out += _table(["item", "value"], [
        ["run id", mv.run_id or "none"],
        ["experiment", client.get_experiment(run.info.experiment_id).name if run else None],
        ["parent sweep run", run_tags.get("mlflow.parentRunId", "none")],
        ["git commit", run_tags.get("mlflow.source.git.commit")],
        ["data path", run_tags.get("features_path")],
        ["model source", mv.source], ["registered model", mv.uri]])
    return "\n".join(out) + "\n"


def _intended_use(project, task: str, threshold) -> str:
    """What the model answers, from its project's task."""
    what = (f"the project **{_text(project.name)}**"
            + (f" ({_text(project.description)})" if project.description else "")
            if project else "its project")
    label = f"`{_text(project.task.label)}`" if project else "the label"
    if task == "multiclass":
        classes = ", ".join(f"`{_text(c)}`" for c in (project.task.classes or [])) \
            if project else "its classes"
        return (f"Answers requests of {what} with the probability of each value of {label} "
                f"({classes}) and the most likely one.")
    if task == "regression":
        return (f"Answers requests of {what} with a prediction of {label}, in its units.")
    chosen = (f"(**{_fmt(threshold)}**, chosen on the validation split of the training run)"
              if threshold is not None else "(none recorded by the training run: set one)")
    words = project.task.decision_labels if project else ["negative", "positive"]
    return (f"Answers requests of {what}: the score is the model's probability that {label} "
            f"is the positive class, and the decision is `{_text(words[1])}` when the score is "
            f"at or above the decision threshold {chosen}, else `{_text(words[0])}`.")


def _limitations(project, task: str, params: dict) -> str:
    """What the card's reader must keep in mind, from the project and the run's split."""
    lines = []
    generate = project.data.generate if project else None
    if generate is not None:
        lines.append(f"- The project's data comes from a **generator** (`{_text(generate.function)}`"
                     "): its patterns are the generator's. Re-validate on real labelled data.")
    if params.get("split", "time") == "time":
        lines.append("- Validation is a **time split** (train before `split_cutoff`, validate "
                     "after): it measures how the model does on the next period, not under "
                     "later drift. Monitor drift in production.")
    else:
        lines.append("- Validation is a **random split** of the rows: it says nothing of how "
                     "the model does on later data. Monitor drift in production.")
    lines.append("- Labels are assumed complete at training time; late labels change the "
                 "picture.")
    if task == "binary":
        lines.append("- Metrics at the decision threshold depend on the base rate of the "
                     "evaluation data.")
    return "\n".join(lines)


def _evaluation(report: dict | None) -> list[str]:
    """Holdout metrics, slices and behavioural checks of a stored evaluation report."""
    if not report:
        return ["**Holdout evaluation:** not evaluated on a holdout yet: run `mlp evaluate` or "
                "promote through the gates."]
    overall = report.get("overall", {})
    task = report.get("task", "binary")
    head = f"Holdout evaluation ({report.get('rows')} rows"
    if task == "binary":
        head += (f", threshold {_fmt(report.get('threshold'))} "
                 f"{_SOURCES.get(report.get('threshold_source'), 'source unknown')}")
    out = [head + "):", ""]
    out += _table(["metric", "value"], [[k, _fmt(overall.get(k))] for k in _OVERALL[task]])
    cols = _SLICE_COLS[task]
    for column, slices in report.get("slices", {}).items():
        out += ["", f"### By {_text(column)}", ""]
        out += _table([column, *cols],
                      [[value, *(_fmt(m.get(k)) for k in cols)]
                       for value, m in slices.items()])
    checks = report.get("checks", {})
    out += ["", "### Behavioural tests", ""]
    out += _table(["test", "result", "rows", "what it checks"],
                  [[n, "PASS" if c.get("passed") else "FAIL", c.get("rows"), c.get("description")]
                   for n, c in checks.items()]) if checks else ["Not run."]
    return out


def _flagged(report: dict | None) -> list[str]:
    """One line per slice too small to trust or with recall far below the overall recall."""
    if not report:
        return []
    recall = report.get("overall", {}).get("recall") or 0.0
    lines = []
    for column, slices in report.get("slices", {}).items():
        for value, m in slices.items():
            where = f"- {_text(column)} = {_text(value)}"
            if m["rows"] < MIN_SLICE_ROWS:
                lines.append(f"{where}: only {m['rows']} holdout rows; its metrics are noise.")
            elif m.get("positives") and m.get("recall") is not None \
                    and m["recall"] < RECALL_RATIO * recall:
                lines.append(f"{where}: recall {_fmt(m['recall'])} vs {_fmt(recall)} overall.")
    if not lines:
        return ["- No slice of the holdout evaluation was flagged."]
    return ["", "Slices flagged by the holdout evaluation:", "", *lines]


def _run_json(config: PlatformConfig, run_id: str | None, path: str) -> dict | None:
    from mlplatform._mlflow import run_json

    return run_json(config, run_id, path)


def _html(markdown: str, title: str) -> str:
    """A standalone HTML page; raw HTML in the Markdown is escaped, never passed through."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            "</title><style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
            f"</style></head><body>\n{body}</body></html>\n")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table (cells escaped)."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def _cell(value: Any) -> str:
    return _text(value).replace("|", "\\|").replace("\n", " ")


def _text(value: Any) -> str:
    """Model-provided text for Markdown: ``<`` escaped so no renderer sees a raw HTML tag."""
    return "n/a" if value is None else str(value).replace("\\", "\\\\").replace("<", "\\<")


def _fmt(value: Any) -> str:
    """Numbers as the card shows them: floats to 4 decimals, others as they are."""
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays as plain JSON values."""
    return value.tolist() if hasattr(value, "tolist") else str(value)
