"""Import a model trained elsewhere (ONNX) into a project: what ``mlp registry import`` runs.

Steps: the project's training set (built as for training: example data, contract gate, feature
store) -> the graph scored on its validation rows -> an MLflow run like a training run's
(:mod:`mlplatform.training.imported`) -> the registry (refusing what it would not serve). The
model is judged, promoted and served like any trained one; it must take the project's model
inputs (``model_inputs.columns``, in order) and give the task's outputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from mlplatform.config import PlatformConfig
from mlplatform.pipelines import steps
from mlplatform.project import Project


def run_import_job(project: Project, platform: PlatformConfig,
                   model: str | os.PathLike[str], name: str | None = None,
                   alias: str | None = None, echo: Callable[[str], object] = print):
    """Log ``model`` (an ``.onnx`` file) as a run of ``project`` and register it as ``name``
    (default: the project's name) with ``alias`` (default: none; promote it through the gates).

    Returns:
        The TrainResult (run id, model URI, ``val_*`` metrics) and the ModelVersion.

    Raises:
        ModelRefused: The file is not ONNX (a pickle is refused with how to convert it), or the
            graph does not take the project's model inputs; nothing is logged or registered.
    """
    from mlplatform.models.onnx_model import load_graph
    from mlplatform.pipelines.spine import register_model
    from mlplatform.training.config import TrainConfig
    from mlplatform.training.data import prepare
    from mlplatform.training.imported import log_onnx_run

    proto = load_graph(model)      # a file that is not ONNX fails before any work
    steps.ensure_data(platform, project, echo=echo)
    tset = steps.build_features(platform, project)
    echo(f"training set: {tset.num_rows:,} rows at {tset.path}")
    config, _ = prepare(TrainConfig(features_path=tset.path, experiment_name=platform
                                    .experiment_name, run_name=f"import-{os.path.basename(model)}"),
                        platform, project)
    echo(f"scoring {model} on the validation rows ({config.task}, "
         f"{len(config.feature_columns)} inputs)")
    result = log_onnx_run(config, platform, proto, source=model)
    echo("run_id: " + result.run_id)
    echo("metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.metrics.items())))
    mv = register_model(platform, result, name or project.name, alias=alias,
                        feature_versions=tset.feature_versions,
                        description=f"imported from {os.path.basename(model)} "
                                    f"(MLflow run {result.run_id})")
    return result, mv
