"""Each literal of the operator/runtime contract is written once, in ``batchpilot_contract``.

The product sources (runtime, operator, local cluster) are parsed, and every string or integer
constant outside a docstring is compared with the contract's values: a copy of one is a second
definition that could drift. Values that are plain words (``ok``, ``device``) are too common
to tell apart from prose and are left to the structure (an enum, a name imported); the ones
compared are paths, label and annotation keys, metric and variable names, the port and the
user id.
"""

from __future__ import annotations

import ast
import enum
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from batchpilot_contract import batching, labels, lifecycle, metrics, pod

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("runtime", "operator", "cluster")
CONTRACT_MODULES = (batching, labels, lifecycle, metrics, pod)

ALLOWED = {
    # The console scripts are named like the label values, on purpose: the program's name
    # in its usage line, and the local cluster's map from an image to the script it runs.
    ("runtime/batchpilot_runtime/settings.py", "batchpilot-runtime"),
    ("operator/batchpilot_operator/__main__.py", "batchpilot-operator"),
    ("cluster/batchpilot_localcluster/images.py", "batchpilot-runtime"),
    ("cluster/batchpilot_localcluster/images.py", "batchpilot-operator"),
    # The operator's own variables share the runtime's prefix (its reference page lists them).
    ("operator/batchpilot_operator/docgen.py", "BATCHPILOT_"),
}
"""(file, value) pairs where the same characters mean something else than the contract's."""


def contract_values(modules: tuple[ModuleType, ...] = CONTRACT_MODULES) -> dict[object, str]:
    """Every public str or int constant the contract defines (tuples and enums opened), by
    value, each named where it is defined (its constants are annotated ``Final``)."""
    found: dict[object, str] = {}
    for module in modules:
        short = module.__name__.rsplit(".", 1)[-1]
        annotated = vars(module).get("__annotations__", {})
        for name, value in vars(module).items():
            defined = name in annotated or getattr(value, "__module__", None) == module.__name__
            if name.startswith("_") or not defined:
                continue
            if isinstance(value, type) and issubclass(value, enum.Enum):
                for member in value:
                    found.setdefault(member.value, f"{short}.{name}.{member.name}")
            elif isinstance(value, tuple) and all(isinstance(v, str) for v in value):
                for item in value:
                    found.setdefault(item, f"{short}.{name}")
            elif isinstance(value, str | int) and not isinstance(value, bool):
                found.setdefault(value, f"{short}.{name}")
    return found


def distinctive(value: object) -> bool:
    """Whether a copy of ``value`` in code can only mean the contract's value."""
    if isinstance(value, int):
        return value >= 1000
    text = str(value)
    return bool(re.search(r"[/._-]", text)) or (text.isupper() and len(text) > 3)


def _docstrings(tree: ast.AST) -> set[int]:
    """The bare strings standing as statements: docstrings of modules, classes, functions and
    attributes, which have no effect on what the code does."""
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }


def copies(source: str, values: dict[object, str]) -> Iterator[tuple[int, object, str]]:
    """(line, constant, contract name) for each constant of ``source`` that copies a value:
    equal to it (same type), or, for a path or key of ten characters or more, containing it."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    long_paths = [v for v in values if isinstance(v, str) and "/" in v and len(v) >= 10]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or id(node) in skip:
            continue
        value = node.value
        if isinstance(value, bool) or not isinstance(value, str | int):
            continue
        match = next((v for v in values if v == value and type(v) is type(value)), None)
        if match is not None:
            yield node.lineno, value, values[match]
        elif isinstance(value, str):
            for path in long_paths:
                if path in value:
                    yield node.lineno, value, values[path]


def product_files() -> list[Path]:
    return sorted(p for d in PRODUCT for p in (ROOT / d).rglob("*.py"))


def test_no_contract_literal_is_defined_outside_the_contract() -> None:
    values = {v: n for v, n in contract_values().items() if distinctive(v)}
    found = []
    for path in product_files():
        rel = path.relative_to(ROOT).as_posix()
        for line, value, name in copies(path.read_text(), values):
            if (rel, value) not in ALLOWED:
                found.append(f"{rel}:{line}: {value!r} is {name}")
    assert not found, "import these from batchpilot_contract:\n" + "\n".join(found)


def test_every_allowed_copy_is_still_there() -> None:
    values = contract_values()
    for rel, value in ALLOWED:
        assert value in values, f"{value!r} is no longer a contract value"
        hits = [v for _, v, _ in copies((ROOT / rel).read_text(), {value: "x"})]
        assert value in hits, f"{rel} no longer has {value!r}: drop it from ALLOWED"


def test_the_scan_finds_a_copy() -> None:
    values = {pod.READY_PATH: "pod.READY_PATH", pod.PORT: "pod.PORT"}
    source = (
        '"""Docstrings may name /v2/health/ready."""\n'
        'PATH = "/v2/health/ready"\n'
        "PORT = 8080\n"
        'URL = f"http://host:{PORT}/v2/health/ready?x"\n'
        'NAME = "8080"\n'
    )
    assert [(line, name) for line, _, name in copies(source, values)] == [
        (2, "pod.READY_PATH"),
        (3, "pod.PORT"),
        (4, "pod.READY_PATH"),
    ]


def test_the_values_compared_include_every_kind_of_contract_literal() -> None:
    compared = {v for v in contract_values() if distinctive(v)}
    expected = {
        pod.PORT,
        pod.LIVE_PATH,
        pod.CONFIG_DIR,
        pod.PVC_ROOT_ENV,
        *pod.TUNING_ENV,
        metrics.QUEUE_DEPTH,
        labels.INSTANCE_LABEL,
        labels.CONFIG_GENERATION_ANNOTATION,
        batching.CONFIGMAP_KEY,
        batching.CONFIGMAP_SUFFIX,
    }
    assert expected <= compared
    assert "ok" not in compared, "plain words are left to the structure"
