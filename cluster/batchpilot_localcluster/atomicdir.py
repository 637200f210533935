"""Atomic directory contents, the way kubelet writes ConfigMap and Secret volumes.

Layout of a volume directory:

    <dir>/..2026_01_01_00_00_00.123456789/<files>   the payload of one version
    <dir>/..data -> ..2026_...                        swapped with one rename
    <dir>/<name> -> ..data/<name>                     what readers open

A reader opening `<dir>/<name>` sees the old version or the new one, never a mix or a partial
file: the new version is complete on disk before `..data` is renamed onto it, and the old one
stays on disk until the write after (kubelet removes it at once, so a reader that resolved
`..data` just before the swap can find its file gone).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

DATA = "..data"

#: path inside the volume -> (content, file mode)
Payload = Mapping[str, tuple[bytes, int]]


def _validate(name: str) -> None:
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or ".." in parts or parts[0].startswith(".."):
        raise ValueError(f"invalid file path {name!r} in volume payload")


def read_current(directory: Path) -> dict[str, tuple[bytes, int]] | None:
    """The payload currently published in `directory`, or None when nothing is."""
    data = directory / DATA
    if not data.is_symlink():
        return None
    current = directory / os.readlink(data)
    payload: dict[str, tuple[bytes, int]] = {}
    for path in sorted(current.rglob("*")):
        if path.is_file():
            payload[str(path.relative_to(current))] = (
                path.read_bytes(),
                path.stat().st_mode & 0o777,
            )
    return payload


def write(directory: Path, payload: Payload) -> bool:
    """Publish `payload` in `directory` atomically. Returns False when it was already there."""
    for name in payload:
        _validate(name)
    directory.mkdir(parents=True, exist_ok=True)
    if read_current(directory) == dict(payload):
        return False
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
    version = Path(tempfile.mkdtemp(prefix=stamp, dir=directory))
    for name, (content, mode) in payload.items():
        target = version / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(mode)
    version.chmod(0o755)

    data = directory / DATA
    old = directory / os.readlink(data) if data.is_symlink() else None
    staging = directory / "..data_tmp"
    if staging.is_symlink() or staging.exists():
        staging.unlink()
    staging.symlink_to(version.name)
    staging.rename(data)  # the atomic swap

    tops = {Path(name).parts[0] for name in payload}
    for top in tops:
        link = directory / top
        if not link.is_symlink():
            link.symlink_to(Path(DATA) / top)
    for entry in directory.iterdir():
        if entry.name.startswith(".."):
            continue
        if entry.is_symlink() and entry.name not in tops:
            entry.unlink()
    # The version just replaced stays until the next write: a reader that resolved `..data`
    # to it an instant before the swap still finds its file. Older ones go now.
    keep = {version.name, old.name if old is not None else ""}
    for entry in directory.iterdir():
        if entry.name.startswith("..") and entry.name not in keep and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
    return True
