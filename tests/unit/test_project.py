"""Project habits: one version everywhere, and pre-commit hooks that lint as `make lint` does."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from batchpilot_operator.settings import DEFAULT_RUNTIME_IMAGE

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "batchpilot"


def version() -> str:
    """The single source of the version: the package metadata in pyproject.toml."""
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def test_chart_app_version_and_default_images_follow_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["tag"] == "", "the operator image tag defaults to appVersion"
    assert values["runtime"]["image"] == f"batchpilot/runtime:{version()}"
    assert DEFAULT_RUNTIME_IMAGE.rpartition(":")[2] == version()
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert "(default .Chart.AppVersion .Values.image.tag)" in helpers


def test_image_tags_in_the_docs_follow_the_package_version() -> None:
    image = re.compile(r"batchpilot/(?:operator|runtime)[\w-]*:([\w.-]+)")
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for tag in image.findall(path.read_text()):
            assert tag.rstrip(".") == version(), f"{path.relative_to(ROOT)}: image tag {tag}"


def lint_commands() -> list[str]:
    """The ruff and mypy lines of `make lint`, with $(VENV) spelt out."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    lines = [line.strip() for line in recipe.splitlines()[1:]]
    return [
        line.replace("$(VENV)", ".venv")
        for line in lines
        if line.startswith(("$(VENV)/bin/ruff", "$(VENV)/bin/mypy"))
    ]


def test_pre_commit_hooks_run_what_make_lint_runs() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = [hook for repo in config["repos"] for hook in repo["hooks"]]
    assert all(repo["repo"] == "local" for repo in config["repos"]), "hooks work offline"
    entries = [
        h["entry"] for h in hooks if h["entry"].startswith((".venv/bin/ruff", ".venv/bin/mypy"))
    ]
    assert len(lint_commands()) == 3
    assert entries == lint_commands()
    for hook in hooks:
        assert hook["language"] == "system"
        assert hook["pass_filenames"] is False


def test_test_modules_have_one_name_across_the_layers() -> None:
    """pytest imports test modules by their base name: two layers with the same file name
    stop a whole-suite run at collection, while each layer alone passes."""
    names = [p.name for p in (ROOT / "tests").glob("*/test_*.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
