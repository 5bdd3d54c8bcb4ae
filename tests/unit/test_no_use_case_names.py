"""No use-case names in mlplatform/: what an example project owns (its name, label, classes,
request fields, entities, views, features, model inputs, vocabularies) appears in no string,
comment or docstring of the platform's code, and the project names in no identifier either.

The example data generators (mlplatform/datasets/) are example data sources and the scaffold
templates (mlplatform/project/templates/) are a user's starting files: both are exempt.
"""

import io
import re
import tokenize
from pathlib import Path

from mlplatform.project import feature_names
from tests.projects import project

PACKAGE = Path(__file__).resolve().parents[2] / "mlplatform"
EXEMPT = ("datasets", "templates")
EXAMPLES = ("fraud", "delivery", "wine")
#: Names a platform convention owns, not an example: the default time column of sources, views
#: and the online store's rows.
CONVENTIONS = {"event_timestamp"}


def example_names() -> set[str]:
    """Every example's identifiers: the compound ones (``user_id``, ``amount_log``), the
    project names, labels and class names, and the vocabularies' compound values."""
    names: set[str] = set()
    for name in EXAMPLES:
        p = project(name)
        names |= {p.name, p.task.label, *map(str, p.task.classes or [])}
        candidates = {*p.request_fields, *p.input_columns, *feature_names(p),
                      *(e.name for e in p.entities), *(v.name for v in p.feature_views),
                      *(s.name for s in p.sources)}
        for spec in p.request.fields.values():
            candidates |= {str(v) for v in spec.enum or []}
        # Single plain words (amount, country, items) are English before they are columns.
        names |= {n for n in candidates if "_" in n}
    return names - CONVENTIONS


def texts(path: Path):
    """(line, token type, text) of every string literal (docstrings and f-strings included),
    comment and identifier of a module."""
    kinds = {tokenize.STRING, tokenize.COMMENT, tokenize.NAME,
             getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type in kinds:
            yield tok.start[0], tok.type, tok.string


def test_mlplatform_names_no_example_column_or_project():
    names = example_names()
    assert {"user_id", "amount_log", "delivery_minutes", "od280_od315", "fraud", "is_fraud",
            "class_0", "wine"} <= names, "the examples' names were not all collected"
    patterns = {n: re.compile(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])") for n in names}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if set(path.relative_to(PACKAGE).parts) & set(EXEMPT):
            continue
        for line, kind, text in texts(path):
            for name, pattern in patterns.items():
                identifier = kind == tokenize.NAME
                if identifier and name not in EXAMPLES:
                    continue           # keyword arguments of other libraries (device_type=)
                if pattern.search(text):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name!r}")
    assert not found, "use-case names in mlplatform/ (move them to the example):\n" + \
        "\n".join(found)


def test_the_check_catches_a_column_name(tmp_path, monkeypatch):
    """The guard itself: a module that names an example's column fails it."""
    module = tmp_path / "mlplatform" / "leak.py"
    module.parent.mkdir()
    module.write_text('"""Scores by merchant."""\nCOLUMNS = ["merchant_fraud_rate_30d"]\n')
    import sys

    this = sys.modules[__name__]
    monkeypatch.setattr(this, "PACKAGE", module.parent)
    try:
        test_mlplatform_names_no_example_column_or_project()
    except AssertionError as exc:
        assert "merchant_fraud_rate_30d" in str(exc) and "leak.py:2" in str(exc)
    else:
        raise AssertionError("the check did not catch a column name")
