"""The steps every door shares, for any project: load and check it, make sure its data is
there, build its features and training set, make a model's training config, register.

A project is checked whole when it is loaded here (:func:`load`): the file and its
model-inputs code (:func:`mlplatform.project.load_project`), every model's training and sweep
settings, and its gates, so a bad key fails before any Ray or MLflow work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlplatform.config import PlatformConfig
from mlplatform.errors import ProjectError
from mlplatform.project import Project, load_project
from mlplatform.training import TrainConfig


def load(project: str | Path | Project | None, platform: PlatformConfig | None = None
         ) -> Project:
    """Load a project (default: ``platform.project``, ``$MLP_PROJECT``, ``./mlplatform.yaml``)
    and check every section (:func:`check_project`).

    Raises:
        ProjectError: Naming the file and the key.
    """
    if project is None and platform is not None:
        project = platform.project
    loaded = load_project(project)
    check_project(loaded)
    return loaded


def check_project(project: Project) -> None:
    """Check the sections other rooms own: ``models.<name>.train`` (TrainConfig),
    ``models.<name>.tune`` (the sweep) and ``gates``.

    Raises:
        ProjectError: Naming the file and the key.
    """
    from mlplatform.errors import ConfigError
    from mlplatform.registry.gates import GateConfig

    for name, spec in project.models.items():
        config = train_config(project, name)
        if spec.tune is not None:
            from mlplatform.pipelines.tune_job import TuneSection, check_tune

            try:
                check_tune(config, TuneSection.load(spec.tune, f"project file {project.file}",
                                                    prefix=f"models.{name}.tune."))
            except ProjectError:
                raise
            except ConfigError as exc:
                raise ProjectError(f"project file {project.file}: models.{name}.tune: {exc}"
                                   ) from None
    try:
        GateConfig.for_project(project)
    except ConfigError as exc:
        raise ProjectError(f"project file {project.file}: gates: {exc}") from None


def train_config(project: Project, model: str | None = None, **overrides: Any) -> TrainConfig:
    """The training config of the project's model ``model`` (default: its first), with the
    project's task, classes, label, model inputs, time column and validation share filled in.

    Raises:
        ProjectError: No such model, or its ``train`` section is invalid (naming the key).
    """
    from mlplatform.errors import ConfigError

    name = model or project.default_model
    spec = project.model(name)
    try:
        config = TrainConfig.load({**spec.train, **overrides}, f"project file {project.file}",
                                  prefix=f"models.{name}.train.")
    except ConfigError as exc:
        raise ProjectError(str(exc)) from None
    task = project.task
    fill: dict[str, Any] = {
        "task": config.task or task.type, "label": config.label or task.label,
        "feature_columns": config.feature_columns or project.input_columns,
        "timestamp_column": config.timestamp_column or project.data.timestamp,
        "validation_fraction": config.validation_fraction or project.data.validation_fraction,
    }
    if task.type == "multiclass" and config.classes is None:
        fill["classes"] = list(task.classes or [])
    if config.torch.categorical is None:
        fill["torch"] = config.torch.model_copy(update={"categorical": {
            c: n + 1 for c, n in project.categorical.items() if c in fill["feature_columns"]}})
    return config.model_copy(update=fill)


def register_spec(project: Project, model: str | None = None) -> tuple[str, str | None]:
    """(registered model name, alias) of the project's model ``model``."""
    spec = project.model(model)
    return spec.registration.name or project.name, spec.registration.alias


def data_path(config: PlatformConfig, project: Project) -> Path:
    """Where the project's labelled data lives: its events source or its table (relative paths
    under ``storage_root``)."""
    if project.uses_feature_store:
        p = Path(project.feature_repo.source(project.data.events).path)
    else:
        p = Path(project.data.table)
    return p if p.is_absolute() else config.path(*p.parts)


def ensure_data(config: PlatformConfig, project: Project, rows: int | None = None,
                seed: int | None = None, force: bool = False,
                echo=print) -> Path:
    """Write the project's example data (``data.generate``) when none is there (or ``force``);
    returns where the data is. A project without ``data.generate`` must bring its own.

    Args:
        rows, seed: Override the generator's ``rows`` and ``seed``.
    """
    path = data_path(config, project)
    present = path.exists() and (path.is_file() or any(path.iterdir()))
    spec = project.data.generate
    if spec is None or (present and not force):
        return path
    from mlplatform.project.inputs import import_function

    fn = import_function(spec.function, project.root, f"project file {project.file}: "
                         "data.generate.function")
    n = rows or spec.rows
    echo(f"no data at {path}: writing {n:,} example rows with {spec.function}"
         if not present else f"writing {n:,} example rows with {spec.function} to {path}")
    config.ensure_dirs()
    path.parent.mkdir(parents=True, exist_ok=True)
    fn(path, n, spec.seed if seed is None else seed)
    return path


def build_features(config: PlatformConfig, project: Project, online_until=None,
                   materialize: bool = True):
    """Validate the data against its contract, build every feature view, materialize them
    online (feature-store projects), and write the training set.

    Args:
        online_until: Materialize rows before this time only (default: all), e.g. to replay
            later events as live traffic, as the demo does.

    Returns:
        The :class:`~mlplatform.features.TrainingSet` (path, rows, feature versions).

    Raises:
        DataValidationError: The data fails its contract (nothing is built or logged).
    """
    from mlplatform.features import FeatureStore, build_training_set

    if not project.uses_feature_store:
        validate_table(config, project)
        return build_training_set(project, config=config)
    store = FeatureStore(config, project)
    store.validate_source()               # the gate: bad data stops here, before any MLflow run
    store.build(validate=False)
    if materialize:
        store.materialize_incremental(end=online_until)
    return build_training_set(project, store)


def validate_table(config: PlatformConfig, project: Project) -> None:
    """Gate a tabular project's table with its contract (``data.contract``), if it has one.

    Raises:
        DataValidationError: Listing every failing check.
    """
    from mlplatform.features.training_set import table_path
    from mlplatform.features.validation import gate

    path = table_path(config, project)
    if project.data.contract:
        gate(path, project.path(project.data.contract))
