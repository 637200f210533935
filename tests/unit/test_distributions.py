"""The distributions: each image installs only its side and the contract.

The repository holds four distributions (``contract/``, ``runtime/``, ``operator/``,
``cluster/``, each with its ``pyproject.toml``) and the root workspace project that ``make
install`` installs them with. There is no container engine in the unit layer, so what an
image would hold is checked from the Dockerfiles' COPY and install lines, the distributions'
metadata, and their wheels as hatchling builds them.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hatchling.builders.wheel import WheelBuilder
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from batchpilot_contract import pod

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {
    "batchpilot-contract": "contract",
    "batchpilot-runtime": "runtime",
    "batchpilot-operator": "operator",
    "batchpilot-localcluster": "cluster",
}
PACKAGES = {
    "batchpilot-contract": "batchpilot_contract",
    "batchpilot-runtime": "batchpilot_runtime",
    "batchpilot-operator": "batchpilot_operator",
    "batchpilot-localcluster": "batchpilot_localcluster",
}
MODEL_LIBRARIES = {"torch", "transformers", "fastapi", "uvicorn", "tokenizers", "numpy"}
SCRIPTS = {
    "batchpilot-runtime": "batchpilot-runtime",
    "batchpilot-operator": "batchpilot-operator",
    "batchpilot-node-agent": "batchpilot-localcluster",
    "batchpilot-cluster": "batchpilot-localcluster",
}
"""Each console script and the one distribution that ships it."""


def project(folder: str) -> dict[str, Any]:
    data = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())
    return dict(data["project"])


def requirements(folder: str) -> dict[str, Requirement]:
    reqs = (Requirement(line) for line in project(folder).get("dependencies", []))
    return {canonicalize_name(r.name): r for r in reqs}


def build_wheel(folder: str, out: Path) -> zipfile.ZipFile:
    """The wheel hatchling builds from ``folder`` (what ``pip install ./folder`` installs)."""
    built = list(WheelBuilder(str(ROOT / folder)).build(directory=str(out), versions=["standard"]))
    assert len(built) == 1, built
    return zipfile.ZipFile(built[0])


def imported_roots(source: str) -> set[str]:
    """The top-level modules a module imports, at any depth (lazy imports included)."""
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_every_distribution_has_the_workspace_version_and_pins_the_contract() -> None:
    version = project(".")["version"]
    for name, folder in FOLDERS.items():
        meta = project(folder)
        assert (meta["name"], meta["version"]) == (name, version), folder
        if name != "batchpilot-contract":
            assert str(requirements(folder)["batchpilot-contract"].specifier) == f"=={version}"
    root = requirements(".")
    for name in FOLDERS:
        assert str(root[name].specifier) == f"=={version}", f"the workspace pins {name}"


def test_the_workspace_installs_each_distribution_from_its_folder() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    sources = data["tool"]["uv"]["sources"]
    assert sources == {name: {"path": f, "editable": True} for name, f in FOLDERS.items()}
    makefile = (ROOT / "Makefile").read_text()
    assert "DISTRIBUTIONS := contract runtime operator cluster" in makefile
    assert "$(VENV)/.installed: pyproject.toml $(DISTRIBUTIONS:%=%/pyproject.toml)" in makefile


def test_the_contract_depends_on_pydantic_only() -> None:
    assert set(requirements("contract")) == {"pydantic"}


def test_the_operator_distribution_has_no_runtime_cluster_or_model_library() -> None:
    deps = set(requirements("operator"))
    assert not deps & MODEL_LIBRARIES
    assert not deps & {"batchpilot-runtime", "batchpilot-localcluster", "batchpilot"}


def test_the_runtime_distribution_has_no_operator_or_cluster() -> None:
    deps = set(requirements("runtime"))
    assert not deps & {"kopf", "kubernetes", "batchpilot-operator", "batchpilot-localcluster"}


def test_each_console_script_is_shipped_by_one_distribution() -> None:
    shipped: dict[str, str] = {}
    for name, folder in FOLDERS.items():
        for script, target in project(folder).get("scripts", {}).items():
            assert script not in shipped, script
            shipped[script] = name
            module = target.split(":")[0]
            assert module.split(".")[0] == PACKAGES[name], f"{script} runs {module}"
            path = ROOT / folder / (module.replace(".", "/") + ".py")
            assert re.search(rf"^def {target.split(':')[1]}\(", path.read_text(), re.M), target
    assert shipped == SCRIPTS
    assert "scripts" not in project("."), "the workspace ships no code"


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, zipfile.ZipFile]:
    out = tmp_path_factory.mktemp("wheels")
    return {name: build_wheel(folder, out) for name, folder in FOLDERS.items()}


def _modules(wheel: zipfile.ZipFile) -> dict[str, str]:
    return {n: wheel.read(n).decode() for n in wheel.namelist() if n.endswith(".py")}


def _top_levels(wheel: zipfile.ZipFile) -> set[str]:
    return {n.split("/")[0] for n in wheel.namelist() if ".dist-info/" not in n}


def test_each_wheel_holds_its_own_package_only(wheels: dict[str, zipfile.ZipFile]) -> None:
    for name, wheel in wheels.items():
        assert _top_levels(wheel) == {PACKAGES[name]}, name
    runtime = wheels["batchpilot-runtime"].namelist()
    assert any(n.startswith("batchpilot_runtime/profiles/") for n in runtime), "profiles ship"


def test_no_module_of_the_operator_wheel_imports_the_runtime_the_cluster_or_torch(
    wheels: dict[str, zipfile.ZipFile],
) -> None:
    modules = _modules(wheels["batchpilot-operator"])
    assert "batchpilot_operator/handlers.py" in modules
    assert "batchpilot_operator/docgen.py" not in modules, "docgen documents the runtime too"
    forbidden = MODEL_LIBRARIES | {"batchpilot_runtime", "batchpilot_localcluster"}
    for path, source in modules.items():
        assert not imported_roots(source) & forbidden, path


def test_the_contract_imports_nothing_of_either_side(wheels: dict[str, zipfile.ZipFile]) -> None:
    allowed = set(sys.stdlib_module_names) | {"pydantic", "batchpilot_contract"}
    for path, source in _modules(wheels["batchpilot-contract"]).items():
        assert imported_roots(source) <= allowed, path


def test_the_runtime_wheel_imports_no_operator_code(wheels: dict[str, zipfile.ZipFile]) -> None:
    for path, source in _modules(wheels["batchpilot-runtime"]).items():
        assert not imported_roots(source) & {"batchpilot_operator", "batchpilot_localcluster"}, path


def dockerfile(folder: str) -> tuple[list[str], list[str]]:
    """The sources a Dockerfile COPYs from the build context, and what its pip installs."""
    text = (ROOT / folder / "Dockerfile").read_text().replace("\\\n", " ")
    copied, installed = [], []
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            copied += words[1:-1]
        for match in re.finditer(r"/bin/pip install (.+?)(?:&&|$)", line):
            installed += match.group(1).split()
    return copied, installed


@pytest.mark.parametrize(
    ("folder", "side"),
    [("operator", "batchpilot_operator"), ("runtime", "batchpilot_runtime")],
)
def test_each_dockerfile_copies_and_installs_its_side_and_the_contract(
    folder: str, side: str
) -> None:
    copied, installed = dockerfile(folder)
    assert copied == [
        "contract/pyproject.toml",
        "contract/batchpilot_contract",
        f"{folder}/pyproject.toml",
        f"{folder}/{side}",
    ]
    assert installed == ["./contract", f"./{folder}"]


def test_the_runtime_image_matches_the_pod_contract() -> None:
    text = (ROOT / "runtime" / "Dockerfile").read_text()
    assert re.search(rf"^EXPOSE {pod.PORT}$", text, re.M)
    assert re.search(rf"^USER {pod.RUN_AS_ID}:{pod.RUN_AS_ID}$", text, re.M)
    assert f"{pod.PVC_ROOT_ENV}={pod.PVC_ROOT}" in text
    assert f"mkdir -p /models /var/cache/huggingface {pod.CONFIG_DIR}" in text
