"""The Helm chart's files, read without helm: the CRD copies, documented values, NOTES.

Rendering the chart needs the helm binary: tests/cluster/test_chart_render.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "batchpilot"


def test_chart_crds_are_the_generated_ones() -> None:
    chart_crd = (CHART / "crds" / "batchedmodels.yaml").read_text()
    assert chart_crd == (ROOT / "crds" / "batchedmodels.yaml").read_text()
    names = [
        d["metadata"]["name"]
        for d in yaml.safe_load_all((CHART / "crds" / "kopf-peering.yaml").read_text())
    ]
    assert names == ["clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"]


def test_every_value_is_documented() -> None:
    """Each value has a `# --` comment, on itself or on a parent whose default it is part of."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    undocumented = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z]\w*):(.*)$", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            j -= 1
        block = [lines[k].strip() for k in range(j + 1, i)]
        documented = bool(block) and block[0].startswith("# --")
        inherited = any(doc for _, doc in stack)
        leaf = match.group(3).strip() != ""
        if leaf and not (documented or inherited):
            undocumented.append(line.strip())
        stack.append((indent, documented))
    assert not undocumented, f"values without a `# --` comment: {undocumented}"


def test_notes_name_the_next_command() -> None:
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert 'rollout status deployment/{{ include "batchpilot.fullname" . }}' in notes
    assert "kubectl get bm" in notes
