"""Which versions of each model exist, and which one is active.

Layout (plain files, so a model folder can be copied between machines or committed):

    models/<name>/<version>/model.onnx      the exported graph with its metadata
    models/<name>/<version>/card.json       evaluation report (+ card.md, plots)
    models/<name>/active.json               {"active": "v2", "history": ["v1", "v2"]}

`history` is the promotion order; rollback steps back through it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
ACTIVE_FILE = "active.json"
_VERSION = re.compile(r"^v(\d+)$")
# One folder, never a path; at most 64 characters, the audit store's column. Line names
# follow it too (settings.LineName): they are URL segments, MQTT topic levels, that column.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)


class RegistryError(LookupError):
    """Unknown model or version, or nothing to roll back to."""


class RegistryFileError(RegistryError):
    """A registry file that is not what the registry writes (edited by hand or damaged).

    Kept apart from "unknown model": the service answers 422 and keeps serving, and the
    message names the file and how to repair it.
    """


class _ActiveFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    active: str = Field(pattern=_VERSION.pattern)
    history: list[str]


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        json.dump(data, tmp, indent=2)
        tmp.flush()
        os.fsync(tmp.fileno())
    replace_readable(tmp.name, path)


def replace_readable(tmp_name: str, path: Path) -> None:
    """Move a finished temp file over `path`, keeping the mode `path` had (new: 0644).

    Temp files are created 0600; published as they are, a model or card written by one
    user (an engineer's evaluate) could not be read by the service running as another.
    """
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    os.chmod(tmp_name, mode)
    os.replace(tmp_name, path)


def _unreadable(path: Path, exc: OSError) -> RegistryFileError:
    """Permissions, I/O error: reported and repaired like a damaged file."""
    return RegistryFileError(f"{path} cannot be read: {exc.strerror}")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, exc) from None


def check_name(name: str) -> str:
    """Refuse a model name that is not a plain folder name (no '/', '..' or hidden dir)."""
    if not _NAME.match(name):
        raise RegistryError(f"invalid model name {name!r}: use up to 64 letters, "
                            f"digits, '_', '.', '-'")
    return name


class ModelRegistry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        """Model folders with at least one version; an unreadable one is listed, so that
        its lines say why they are not ready instead of vanishing."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if _NAME.match(p.name) and self._may_hold_versions(p.name))

    def _may_hold_versions(self, name: str) -> bool:
        try:
            return bool(self.versions(name))
        except RegistryFileError:
            return True

    def versions(self, name: str) -> list[str]:
        folder = self.root / check_name(name)
        try:
            if not folder.is_dir():
                return []
            found = [p.name for p in folder.iterdir() if _VERSION.match(p.name)
                     and (p / MODEL_FILE).is_file()]
        except OSError as exc:
            raise _unreadable(folder, exc) from None
        return sorted(found, key=lambda v: int(v[1:]))

    def _state(self, name: str) -> dict[str, Any]:
        path = self.root / check_name(name) / ACTIVE_FILE
        if path.is_file():
            try:
                return _ActiveFile.model_validate_json(_read(path)).model_dump()
            except ValidationError as exc:
                problem = exc.errors()[0]["msg"]
                raise RegistryFileError(
                    f"{path} is damaged ({problem}): fix it, or delete it to make the newest "
                    f"version active") from None
        versions = self.versions(name)  # a model folder without active.json: newest wins
        return {"active": versions[-1], "history": versions[-1:]} if versions else {}

    def active(self, name: str) -> str:
        state = self._state(name)
        if not state:
            raise RegistryError(f"no model named '{name}' in {self.root}")
        return state["active"]

    def history(self, name: str) -> list[str]:
        return list(self._state(name).get("history", []))

    def version_dir(self, name: str, version: str | None = None) -> Path:
        version = version or self.active(name)
        if version not in self.versions(name):
            raise RegistryError(f"model '{name}' has no version '{version}' in {self.root}")
        return self.root / name / version

    def model_path(self, name: str, version: str | None = None) -> Path:
        return self.version_dir(name, version) / MODEL_FILE

    def card(self, name: str, version: str | None = None) -> dict[str, Any] | None:
        path = self.version_dir(name, version) / CARD_FILE
        if not path.is_file():
            return None
        try:
            card = json.loads(_read(path))
            if isinstance(card, dict):
                return card
        except ValueError:  # JSONDecodeError, UnicodeDecodeError
            pass
        raise RegistryFileError(f"{path} is not a model card (a JSON object): run "
                                f"`scrapvision evaluate` on the model to write it again")

    def next_version(self, name: str) -> str:
        versions = self.versions(name)
        return f"v{int(versions[-1][1:]) + 1}" if versions else "v1"

    def add(self, name: str, model_file: Path, version: str | None = None) -> str:
        """Copy an exported model in as a new, not yet active, version."""
        if not Path(model_file).is_file():  # checked first: no empty version folder left
            raise RegistryError(f"model file {model_file} does not exist")
        version = version or self.next_version(name)
        if not _VERSION.match(version):
            raise RegistryError(f"invalid version {version!r}: versions are v1, v2, ...")
        target = self.root / check_name(name) / version
        if target.exists():
            raise RegistryError(f"model '{name}' already has a version '{version}'")
        target.mkdir(parents=True)
        shutil.copy2(model_file, target / MODEL_FILE)
        return version

    def promote(self, name: str, version: str) -> None:
        self.version_dir(name, version)  # raises when unknown
        history = [v for v in self.history(name) if v != version] + [version]
        write_json_atomic(self.root / name / ACTIVE_FILE, {"active": version, "history": history})

    def rollback(self, name: str) -> str:
        """Make the previously promoted version active again; returns it."""
        self.active(name)  # raises for an unknown model
        history = self.history(name)
        if len(history) < 2:
            raise RegistryError(f"model '{name}' has no earlier promoted version to roll back to")
        history.pop()
        write_json_atomic(self.root / name / ACTIVE_FILE,
                          {"active": history[-1], "history": history})
        return history[-1]
