"""The docs site builds in strict mode, and README.md stays a quick start whose links resolve.

``mkdocs build --strict`` (with the ``validation`` levels of ``mkdocs.yml``) fails on a link to a
missing page or anchor and on a page left out of the nav, so a broken link fails ``make test``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MKDOCS_YML = ROOT / "mkdocs.yml"
MKDOCS = Path(sys.executable).parent / "mkdocs"
README_MAX_LINES = 200
QUICK_START = ["make demo", "make test"]
#: Markdown inline links and images: [text](target) / ![alt](target).
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _build(config: Path, site_dir: Path) -> subprocess.CompletedProcess[str]:
    if not MKDOCS.exists():
        pytest.fail(f"{MKDOCS} is missing: install the dev extra (make install, or "
                    "pip install -e '.[dev]', which brings mkdocs-material)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [str(MKDOCS), "build", "--strict", "--config-file", str(config), "--site-dir", str(site_dir)],
        cwd=config.parent, env=env, capture_output=True, text=True, timeout=120)


def _nav_pages(nav: list) -> list[str]:
    pages: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            pages.extend(_nav_pages(value))
        else:
            pages.append(value)
    return pages


def _site_path(site: Path, page: str) -> Path:
    """Where mkdocs writes a page (use_directory_urls: foo.md -> foo/index.html)."""
    stem = page.removesuffix(".md")
    if stem == "index" or stem.endswith("/index"):
        return site / f"{stem}.html"
    return site / stem / "index.html"


def _section(text: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no '## {heading}' section"
    return match.group(1)


def test_site_builds_strict_with_every_nav_page(tmp_path: Path) -> None:
    config = yaml.safe_load(MKDOCS_YML.read_text())
    pages = _nav_pages(config["nav"])
    docs = ROOT / config.get("docs_dir", "docs")
    assert sorted(pages) == sorted(p.relative_to(docs).as_posix() for p in docs.rglob("*.md")), (
        "mkdocs.yml's nav must list every page under docs/, once")

    result = _build(MKDOCS_YML, tmp_path / "site")

    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()
    missing = [p for p in pages if not _site_path(tmp_path / "site", p).is_file()]
    assert not missing, f"pages in the nav but not in the built site: {missing}"


def test_readme_is_a_quick_start_whose_links_resolve() -> None:
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; keep it a quick start (<= {README_MAX_LINES}) and "
        "move deep dives to docs/")

    block = re.search(r"```(?:bash|sh|console)?\n(.*?)```", _section(text, "Quick start"), re.S)
    assert block, "README.md's Quick start has no code block"
    commands = [c for c in (line.split("#", 1)[0].strip() for line in block.group(1).splitlines()) if c]
    assert commands == QUICK_START

    broken = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue   # URLs, mailto:, in-page anchors
        path = target.split("#", 1)[0]
        if not (ROOT / path).exists():
            broken.append(target)
    assert not broken, f"README.md links to files that do not exist: {broken}"


def test_strict_build_fails_on_a_broken_link(tmp_path: Path) -> None:
    """The guard itself: a link to a page that does not exist must fail the build."""
    shutil.copy(MKDOCS_YML, tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    page = tmp_path / "docs" / "index.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no-such-page.md).\n")

    result = _build(tmp_path / "mkdocs.yml", tmp_path / "site")

    assert result.returncode != 0, "a broken link passed mkdocs build --strict"
    assert "no-such-page.md" in result.stdout + result.stderr


def test_the_project_reference_names_every_key():
    """docs/projects.md lists every key of mlplatform.yaml (and no key the schema lacks)."""
    from mlplatform.errors import _model_in
    from mlplatform.project.schema import Project

    def keys(model, prefix=""):
        for name, f in model.model_fields.items():
            if f.exclude:
                continue
            key = prefix + (f.alias or name)
            sub = _model_in(f.annotation, [None, None])
            yield key
            if sub is not None:
                yield from keys(sub, key + ".")

    schema = set(keys(Project))
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", (ROOT / "docs/projects.md").read_text(),
                                re.M))
    parents = {k for k in schema if any(o.startswith(k + ".") for o in schema)}
    assert schema - parents <= documented, f"undocumented keys: {sorted(schema - documented - parents)}"
    assert documented <= schema, f"documented keys the schema lacks: {sorted(documented - schema)}"
