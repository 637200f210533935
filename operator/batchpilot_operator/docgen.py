"""Generate the reference pages under ``docs/reference/`` from the code.

``python -m batchpilot_operator.docgen`` writes them (``make docs``); ``--check`` only reports
whether they are stale, and a unit test fails while one is. Each ``*_page`` function is pure:
from the code's objects (the CRD that :mod:`batchpilot_operator.crdgen` builds from
:mod:`batchpilot_operator.api`, the contract's batching config and metrics
(:mod:`batchpilot_contract`), the argument parsers, the operator's settings, the chart's
``values.yaml`` with helm-docs ``# --`` comments) to Markdown. It documents both sides, so it
runs in the workspace (``make docs``) and is left out of the operator's distribution.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from batchpilot_contract.metrics import Metric
from batchpilot_operator.docgen_common import attribute_docs, header, rst_to_markdown, table

REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE = Path("docs") / "reference"
VALUES = Path("charts") / "batchpilot" / "values.yaml"


def _code(value: Any, quote: bool = False) -> str:
    """A value as inline code: JSON, but a string bare unless ``quote``."""
    bare = isinstance(value, str) and value and not quote
    text = value if bare else json.dumps(value, separators=(",", ":"))
    return f"`{text}`"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# ----------------------------------------------------------------------------------- the CRD


def _type(node: dict[str, Any]) -> str:
    kind = str(node["type"])
    if kind == "array":
        return f"list of {_type(node['items'])}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map of {_type(node['additionalProperties'])}"
    return kind


def _bounds(node: dict[str, Any]) -> str:
    parts = []
    if "enum" in node:
        parts.append(", ".join(_code(v) for v in node["enum"]))
    low, high = node.get("minimum"), node.get("maximum")
    if low is not None and node.get("exclusiveMinimum"):
        parts.append(f"> {_num(low)}")
        low = None
    if low is not None and high is not None:
        parts.append(f"{_num(low)}..{_num(high)}")
    elif low is not None:
        parts.append(f">= {_num(low)}")
    elif high is not None:
        parts.append(f"<= {_num(high)}")
    for unit, key in (("characters", "Length"), ("items", "Items")):
        shortest, longest = node.get(f"min{key}"), node.get(f"max{key}")
        if longest is not None and shortest:
            parts.append(f"{shortest}..{longest} {unit}")
        elif longest is not None:
            parts.append(f"<= {longest} {unit}")
    return "; ".join(parts)


def _fields(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """Every field under ``node``: (dotted path, schema node, required)."""
    required = set(node.get("required", ()))
    for key, child in node.get("properties", {}).items():
        here = f"{path}.{key}" if path else key
        yield here, child, key in required
        if child.get("type") == "array":
            yield from _fields(child["items"], f"{here}[]")
        else:
            yield from _fields(child, here)


def _field_rows(root: dict[str, Any], defaults: bool) -> list[list[str]]:
    rows = []
    for path, node, required in _fields(root, ""):
        default = ""
        if required:
            default = "required"
        elif defaults and "default" in node and node["type"] in ("integer", "number"):
            default = f"`{_num(node['default'])}`"
        elif defaults and "default" in node and node["type"] != "object":
            default = _code(node["default"])
        row = [f"`{path}`", _type(node)]
        row += [default, _bounds(node)] if defaults else []
        rows.append([*row, node.get("description", "")])
    return rows


def _rules(node: dict[str, Any], path: str) -> Iterator[tuple[str, str, str]]:
    for rule in node.get("x-kubernetes-validations", ()):
        yield path or "the object", rule["rule"], rule["message"]
    for key, child in node.get("properties", {}).items():
        here = f"{path}.{key}" if path else key
        if child.get("type") == "array":
            yield from _rules(child["items"], f"{here}[]")
        else:
            yield from _rules(child, here)


def crd_page(crd: dict[str, Any]) -> str:
    """The BatchedModel reference: spec and status fields, validation rules, columns."""
    (version,) = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    names = crd["spec"]["names"]
    out = header("BatchedModel reference", "`operator/batchpilot_operator/api/`")
    out += (
        f"`{crd['spec']['group']}/{version['name']}`, kind `{names['kind']}`, short name "
        f"{', '.join(f'`{n}`' for n in names['shortNames'])}, {crd['spec']['scope'].lower()}. "
        f"{schema['description']}\n\n"
    )
    spec, status = schema["properties"]["spec"], schema["properties"]["status"]
    out += "## spec\n\n"
    out += table(["field", "type", "default", "bounds", "meaning"], _field_rows(spec, True))
    out += "\n## status\n\nWritten by the operator.\n\n"
    out += table(["field", "type", "meaning"], _field_rows(status, False))
    out += "\n## Validation rules\n\nThe API server refuses an object that breaks one:\n\n"
    out += table(
        ["where", "rule", "message"],
        [[w if w == "the object" else f"`{w}`", f"`{r}`", m] for w, r, m in _rules(schema, "")],
    )
    out += "\n## `kubectl get bm` columns\n\n"
    columns = [
        [c["name"].upper(), f"`{c['jsonPath']}`", c.get("description", ""), wide]
        for c in version["additionalPrinterColumns"]
        for wide in ["`-o wide`" if c.get("priority") else ""]
    ]
    out += table(["column", "from", "meaning", "shown"], columns)
    return out


def config_page(schema: dict[str, Any], configmap: str, key: str, path: str) -> str:
    """The batching config document (the ConfigMap contract), from its structural schema."""
    out = header(
        "The batching config: `batching.json`", "`contract/batchpilot_contract/batching.py`"
    )
    out += (
        f"ConfigMap `{configmap}`, key `{key}`, mounted at `{path}` and reloaded while "
        "the runtime runs ([the contract](../concepts/contracts.md)). Unknown keys make the "
        "file invalid: it is ignored and the last good config stays.\n\n"
    )
    return out + table(["key", "type", "default", "bounds", "meaning"], _field_rows(schema, True))


# ------------------------------------------------------------------------------- the metrics


def _label(name: str, values: Sequence[str]) -> str:
    return f"`{name}`: {', '.join(f'`{v}`' for v in values)}" if values else f"`{name}`"


def metrics_page(
    metrics: Sequence[Metric],
    label_values: dict[str, tuple[str, ...]],
    doc: str,
    path: str,
    prefix: str,
) -> str:
    """The metrics reference: every metric a runtime pod exports, its labels (with their
    values where the contract fixes them), its buckets, and the meanings given in the metrics
    contract's docstring (from ``What each metric means``)."""
    out = header("Runtime metrics", "`contract/batchpilot_contract/metrics.py`")
    out += (
        f"Every runtime pod serves `GET {path}` in the Prometheus text format. Names start "
        f"with `{prefix}`, units are base units (seconds), counters end in `_total`, and "
        "no `_created` series is exported.\n\n"
    )
    rows: list[list[str]] = []
    buckets: dict[str, list[str]] = {}
    for metric in metrics:
        shown = "; ".join(_label(k, label_values.get(k, ())) for k in metric.labels)
        rows.append([f"`{metric.name}`", metric.kind.value, shown, metric.help])
        if metric.buckets:
            bounds = ", ".join([*(f"{b:g}" for b in metric.buckets), "+Inf"])
            buckets.setdefault(bounds, []).append(f"`{metric.name}`")
    out += table(["name", "type", "labels", "meaning"], rows)
    out += "\n## Buckets\n\nThe same on every pod, so histograms add up across pods.\n\n"
    out += table(["histograms", "upper bounds"], [[", ".join(n), b] for b, n in buckets.items()])
    marker = "What each metric means:"
    if marker in doc:
        out += "\n## Details\n\n" + rst_to_markdown(doc.split(marker, 1)[1]).strip() + "\n"
    return out


# ------------------------------------------------------------------------- flags and settings


_DEFAULT_IN_HELP = re.compile(r"\s*\(default: (?P<text>[^()]*(\([^()]*\)[^()]*)*)\)$")


def _flag_rows(parser: argparse.ArgumentParser, env_prefix: str | None = None) -> list[list[str]]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        help_text = action.help or ""
        match = _DEFAULT_IN_HELP.search(help_text)
        default = ""
        if match:
            help_text = help_text[: match.start()]
            default = match.group("text")
        if action.required:
            default = "required"
        elif action.default is not None and not isinstance(action, argparse._StoreTrueAction):
            shown = action.default
            default = _code(str(shown) if isinstance(shown, Path) else shown)
        if action.choices:
            help_text += f" (one of {', '.join(f'`{c}`' for c in action.choices)})"
        row = [" / ".join(f"`{o}`" for o in action.option_strings)]
        if env_prefix is not None:
            row.append(f"`{env_prefix}{action.dest.upper()}`")
        rows.append([*row, default, help_text])
    return rows


def runtime_page(
    parser: argparse.ArgumentParser, env_prefix: str, pvc_env: str, pvc_default: str
) -> str:
    """The runtime's flags and their ``BATCHPILOT_*`` variables."""
    out = header("Runtime flags and environment", "`runtime/batchpilot_runtime/settings.py`")
    out += (
        f"`{parser.prog}`: {parser.description} Booleans accept `1/true/yes/on` and "
        "`0/false/no/off`. The batching flags are only the starting point: the config file, "
        "when it exists, overrides them and is reloaded while the runtime runs.\n\n"
    )
    out += table(["flag", "environment", "default", "meaning"], _flag_rows(parser, env_prefix))
    out += (
        f"\n`{pvc_env}` (default `{pvc_default}`) is the directory under which "
        "`pvc://claim/path` models are read; the operator sets it where it mounts the claim.\n"
    )
    return out


def operator_page(parser: argparse.ArgumentParser, settings: type, env_prefix: str) -> str:
    """The operator's flags, and the variables that set the runtime pods' defaults."""
    out = header(
        "Operator flags and environment",
        "`operator/batchpilot_operator/__main__.py` and `settings.py`",
    )
    out += (
        f"`{parser.prog}`: {parser.description} The kubeconfig comes from `KUBECONFIG` (or "
        "`~/.kube/config`), else the pod's service account.\n\n## Flags\n\n"
    )
    out += table(["flag", "default", "meaning"], _flag_rows(parser))
    out += "\n## Environment\n\nRead once at start-up.\n\n"
    docs = attribute_docs(settings)
    rows = [
        [f"`{env_prefix}{f.name.upper()}`", _code(f.default), docs.get(f.name, "")]
        for f in dataclasses.fields(settings)
    ]
    out += table(["variable", "default", "meaning"], rows)
    out += "\nThe Helm chart sets these from its values: see [chart values](chart-values.md).\n"
    return out


# ------------------------------------------------------------------------------ chart values


def _values(text: str) -> Iterator[tuple[str, str]]:
    """(dotted key, description) of every key with a ``# --`` comment, helm-docs style: the
    comment is the block right above the key, its first line starting with ``# --``."""
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if comment:
                comment.append(stripped[1:].strip())
            continue
        match = re.match(r"^(\s*)([A-Za-z_][\w-]*):", line)
        if match:
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match.group(2)))
            if comment:
                yield ".".join(k for _, k in stack), " ".join(comment)
        comment = []


def _helm_type(value: Any) -> str:
    for kind, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "string")):
        if isinstance(value, kind):
            return name
    return "list" if isinstance(value, list) else "object"


def values_page(text: str) -> str:
    """The chart's values: key, type, default and the ``# --`` description of each."""
    data = yaml.safe_load(text)
    rows = []
    for key, description in _values(text):
        value: Any = data
        for part in key.split("."):
            value = value[part]
        rows.append([f"`{key}`", _helm_type(value), _code(value, quote=True), description])
    out = header("Helm chart values", "`charts/batchpilot/values.yaml`")
    out += "Set with `--set key=value` or `-f my-values.yaml` on `helm install`.\n\n"
    return out + table(["key", "type", "default", "description"], rows)


# -------------------------------------------------------------------------------- the pages


def _crd() -> str:
    from batchpilot_operator import crdgen

    return crd_page(crdgen.crd())


def _config() -> str:
    from batchpilot_contract import batching, pod
    from batchpilot_operator import crdgen

    raw = batching.BatchingConfig.model_json_schema(by_alias=True)
    schema = crdgen.structural(raw, raw.get("$defs", {}))
    configmap = batching.configmap_name("<name>")
    return config_page(schema, configmap, batching.CONFIGMAP_KEY, pod.CONFIG_PATH)


def _metrics() -> str:
    from batchpilot_contract import metrics, pod

    return metrics_page(
        metrics.METRICS,
        metrics.LABEL_VALUES,
        metrics.__doc__ or "",
        pod.METRICS_PATH,
        metrics.PREFIX,
    )


def _runtime() -> str:
    # The one page that needs the runtime itself (its parser): docgen is a workspace tool.
    from batchpilot_contract import pod
    from batchpilot_runtime import settings

    return runtime_page(settings.build_parser({}), pod.ENV_PREFIX, pod.PVC_ROOT_ENV, pod.PVC_ROOT)


def _operator() -> str:
    from batchpilot_operator.__main__ import build_parser
    from batchpilot_operator.settings import OperatorSettings

    return operator_page(build_parser({}), OperatorSettings, "BATCHPILOT_")


def _chart_values() -> str:
    return values_page((REPO_ROOT / VALUES).read_text())


def _policy() -> str:
    from batchpilot_operator.policydoc import policy_page

    return policy_page()


PAGES: dict[Path, Callable[[], str]] = {
    REFERENCE / "batchedmodel.md": _crd,
    REFERENCE / "batching-json.md": _config,
    REFERENCE / "metrics.md": _metrics,
    REFERENCE / "runtime.md": _runtime,
    REFERENCE / "operator.md": _operator,
    REFERENCE / "chart-values.md": _chart_values,
    REFERENCE / "tuning-policy.md": _policy,
}
"""Each generated page, relative to the repository root, and what renders it."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root")
    parser.add_argument("--check", action="store_true", help="fail if a page is stale")
    args = parser.parse_args(argv)
    from batchpilot_operator import crdgen

    pages = {rel: render() for rel, render in PAGES.items()}
    return crdgen.write_generated(args.root, pages, args.check, "make docs")


if __name__ == "__main__":
    raise SystemExit(main())
