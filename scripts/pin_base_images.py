"""Pin the Dockerfiles' base images by digest: ``python scripts/pin_base_images.py``.

Each Dockerfile names its base image once, as the default of an ``ARG`` before the first
``FROM`` (``ARG PYTHON_IMAGE=python:3.12-slim-bookworm``), and every ``FROM`` goes through
that ARG. This script resolves each tag to the digest of its manifest list, where a registry
is reachable, and writes it next to the tag (``python:3.12-slim-bookworm@sha256:...``): the
tag says what it is, the digest what is pulled. Rerun it to move to a newer build of the same
tag; ``--check`` fails while any base image is pinned by tag only.

Digests come from ``docker buildx imagetools inspect`` or, without docker, ``crane digest``.
A build can still override the ARG (``--build-arg PYTHON_IMAGE=...``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = (ROOT / "operator" / "Dockerfile", ROOT / "runtime" / "Dockerfile")

ARG_LINE = re.compile(r"^ARG (?P<name>[A-Z][A-Z0-9_]*_IMAGE)=(?P<ref>\S+)$", re.M)
"""A base image ARG: a name ending in ``_IMAGE`` and its default reference."""
REFERENCE = re.compile(r"^(?P<image>[^@\s]+:[^@:/\s]+)(@(?P<digest>sha256:[0-9a-f]{64}))?$")
"""``name:tag``, optionally ``@sha256:<64 hex>``: never a bare name or ``latest`` by default."""
FROM_LINE = re.compile(r"^FROM\s+(?P<source>\S+)(\s+AS\s+\S+)?\s*$", re.M | re.I)

Resolver = Callable[[str], str]


def base_image_args(text: str) -> dict[str, str]:
    """The ``*_IMAGE`` ARGs declared before the first ``FROM``, with their defaults."""
    first_from = FROM_LINE.search(text)
    head = text[: first_from.start()] if first_from else text
    return {m.group("name"): m.group("ref") for m in ARG_LINE.finditer(head)}


def from_sources(text: str) -> list[str]:
    """What each ``FROM`` builds on (``${ARG}``, an image, or an earlier stage)."""
    return [m.group("source") for m in FROM_LINE.finditer(text)]


def resolve(image: str) -> str:
    """The digest of ``image`` (``name:tag``) in its registry."""
    if shutil.which("docker"):
        command = ["docker", "buildx", "imagetools", "inspect", image]
        command += ["--format", "{{json .Manifest.Digest}}"]
    elif shutil.which("crane"):
        command = ["crane", "digest", image]
    else:
        raise SystemExit("neither docker (buildx) nor crane is installed")
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    digest = out.stdout.strip().strip('"')
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise SystemExit(f"{image}: no digest in {out.stdout!r}")
    return digest


def pin(text: str, resolver: Resolver = resolve) -> str:
    """``text`` with each base image ARG's default as ``name:tag@<digest from resolver>``."""

    def replace(match: re.Match[str]) -> str:
        ref = REFERENCE.match(match.group("ref"))
        if ref is None:
            raise SystemExit(f"{match.group(0)!r}: the default must be name:tag[@sha256:...]")
        image = ref.group("image")
        return f"ARG {match.group('name')}={image}@{resolver(image)}"

    return ARG_LINE.sub(replace, text)


def unpinned(text: str) -> list[str]:
    """The base image ARGs whose default has no digest."""
    return [
        name
        for name, ref in base_image_args(text).items()
        if not (m := REFERENCE.match(ref)) or not m.group("digest")
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a base image has no digest")
    parser.add_argument("dockerfiles", nargs="*", type=Path, default=list(DOCKERFILES))
    args = parser.parse_args(argv)
    status = 0
    for path in args.dockerfiles:
        text = path.read_text()
        if args.check:
            for name in unpinned(text):
                print(f"{path}: {name} is pinned by tag only", file=sys.stderr)
                status = 1
            continue
        pinned = pin(text)
        if pinned != text:
            path.write_text(pinned)
            print(f"pinned {path}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
