"""Which local command "runs" an image: image patterns -> console scripts of this venv.

There is no container runtime; an image is runnable when a rule maps it to a command. The
command plays the image's entrypoint: a pod's `command` replaces it, `args` follow it.
Rules are glob patterns, matched in order (the extra rules first, then the defaults).
"""

from __future__ import annotations

import fnmatch
import logging
import shutil
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageRule:
    pattern: str
    command: tuple[str, ...]

    def matches(self, image: str) -> bool:
        return fnmatch.fnmatchcase(image, self.pattern)


DEFAULT_RULES = (
    ImageRule("*batchpilot/runtime*", ("batchpilot-runtime",)),
    ImageRule("*batchpilot/operator*", ("batchpilot-operator",)),
    # The agent's own interpreter: handy for tests and quick experiments.
    ImageRule("*batchpilot/python*", ("python",)),
)


def scripts_dir() -> Path:
    """The bin directory of the venv this process runs from."""
    return Path(sys.executable).parent


def resolve_executable(name: str, search: Sequence[Path] = ()) -> str | None:
    """An absolute path for `name`: as given when it has a slash, else the venv, else PATH."""
    if "/" in name:
        return name if Path(name).exists() else None
    if name == "python":
        return sys.executable
    for directory in (*search, scripts_dir()):
        candidate = directory / name
        if candidate.exists():
            return str(candidate)
    return shutil.which(name)


def parse_rules(document: Any) -> list[ImageRule]:
    """Rules from `{"images": [{"pattern": "...", "command": ["..."]}]}` (YAML or JSON)."""
    if document is None:
        return []
    if not isinstance(document, dict) or not isinstance(document.get("images", []), list):
        raise ValueError("image map must be a mapping with a list under 'images'")
    rules = []
    for index, entry in enumerate(document.get("images", [])):
        pattern, command = entry.get("pattern"), entry.get("command")
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"images[{index}].pattern must be a non-empty string")
        if isinstance(command, str):
            command = [command]
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(c, str) for c in command)
        ):
            raise ValueError(f"images[{index}].command must be a non-empty list of strings")
        rules.append(ImageRule(pattern, tuple(command)))
    return rules


class ImageMap:
    """Resolves images to entrypoints; rereads its file when the file changes."""

    def __init__(self, path: Path | None = None, defaults: Sequence[ImageRule] = DEFAULT_RULES):
        self.path = path
        self.defaults = tuple(defaults)
        self._extra: list[ImageRule] = []
        self._stamp: tuple[float, int] | None = None
        self._lock = threading.Lock()

    def _reload(self) -> None:
        if self.path is None:
            return
        with self._lock:
            self._reload_locked(self.path)

    def _reload_locked(self, path: Path) -> None:
        try:
            stat = path.stat()
        except FileNotFoundError:
            self._extra, self._stamp = [], None
            return
        stamp = (stat.st_mtime, stat.st_size)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._extra = parse_rules(yaml.safe_load(path.read_text()))
            except (ValueError, yaml.YAMLError) as error:
                log.warning("image map %s ignored, keeping the previous rules: %s", path, error)

    @property
    def rules(self) -> list[ImageRule]:
        self._reload()
        return [*self._extra, *self.defaults]

    def entrypoint(self, image: str) -> tuple[str, ...] | None:
        """The command an image stands for, or None when no rule matches."""
        for rule in self.rules:
            if rule.matches(image):
                return rule.command
        return None

    def describe(self) -> str:
        return ", ".join(rule.pattern for rule in self.rules)
