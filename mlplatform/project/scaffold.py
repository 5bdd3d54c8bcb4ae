"""``mlp init``: a new project folder that trains and serves as it is.

Two templates: ``feature-store`` (labelled events, an entity, a feature view, a model-inputs
function) and ``tabular`` (one table whose columns a request carries). Each writes example
data with a seeded generator in the folder, so the first ``mlp train`` works before any of the
user's data exists; its README says which files to edit.
"""

from __future__ import annotations

import re
from pathlib import Path

from mlplatform.errors import ConfigError

TEMPLATES = {"feature-store": "labelled events + a feature view + a model-inputs function",
             "tabular": "one table; a request carries the model's features"}
_TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"


def scaffold(folder: str | Path, template: str = "feature-store", name: str | None = None,
             force: bool = False) -> list[Path]:
    """Write a new project into ``folder`` from ``template``.

    Args:
        folder: Where (created; must be empty unless ``force``).
        template: ``feature-store`` or ``tabular``.
        name: The project's name (default: the folder's name).
        force: Write into a folder that is not empty (files with the same names are replaced).

    Returns:
        The files written.

    Raises:
        ConfigError: Unknown template, a folder that is not empty, or a name the registry and
            Serve do not accept.
    """
    if template not in TEMPLATES:
        raise ConfigError(f"unknown template {template!r}: choose one of "
                          f"{', '.join(TEMPLATES)}")
    folder = Path(folder)
    name = name or folder.resolve().name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}", name):
        raise ConfigError(f"project name {name!r}: use letters, digits, '_', '.' and '-' "
                          "(pass --name when the folder's name is not one)")
    if folder.exists() and any(folder.iterdir()) and not force:
        raise ConfigError(f"{folder} is not empty; pick a new folder (or pass --force)")
    source = _TEMPLATE_DIR / template
    written = []
    for path in sorted(source.rglob("*")):
        if path.is_dir() or "__pycache__" in path.parts:
            continue
        target = folder / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text().replace("{{name}}", name))
        written.append(target)
    return written
