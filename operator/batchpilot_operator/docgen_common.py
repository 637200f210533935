"""What every generated reference page shares: its header, Markdown tables, and the
docstrings written under a class's attributes."""

from __future__ import annotations

import ast
import inspect
import itertools
import re
import textwrap
from collections.abc import Sequence


def header(title: str, source: str) -> str:
    """The title and the generated-file notice of a page."""
    return (
        f"# {title}\n\n"
        f"*Generated from {source} by `python -m batchpilot_operator.docgen`; "
        "do not edit by hand: run `make docs`.*\n\n"
    )


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def rst_to_markdown(text: str) -> str:
    """reStructuredText roles and literals as Markdown code."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def attribute_docs(cls: type) -> dict[str, str]:
    """The docstrings written right under a class's attributes (annotated or assigned)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body if isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, after in itertools.pairwise(body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
        elif (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            name = node.targets[0].id
        else:
            continue
        if (
            isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[name] = rst_to_markdown(" ".join(after.value.value.split()))
    return docs
