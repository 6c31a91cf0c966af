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

MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
ACTIVE_FILE = "active.json"
_VERSION = re.compile(r"^v(\d+)$")


class RegistryError(LookupError):
    """Unknown model or version, or nothing to roll back to."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        json.dump(data, tmp, indent=2)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, path)


class ModelRegistry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if self.versions(p.name))

    def versions(self, name: str) -> list[str]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        found = [p.name for p in folder.iterdir() if _VERSION.match(p.name)
                 and (p / MODEL_FILE).is_file()]
        return sorted(found, key=lambda v: int(v[1:]))

    def _state(self, name: str) -> dict[str, Any]:
        path = self.root / name / ACTIVE_FILE
        if path.is_file():
            return json.loads(path.read_text())
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
        return json.loads(path.read_text()) if path.is_file() else None

    def next_version(self, name: str) -> str:
        versions = self.versions(name)
        return f"v{int(versions[-1][1:]) + 1}" if versions else "v1"

    def add(self, name: str, model_file: Path, version: str | None = None) -> str:
        """Copy an exported model in as a new, not yet active, version."""
        version = version or self.next_version(name)
        target = self.root / name / version
        target.mkdir(parents=True, exist_ok=False)
        shutil.copy2(model_file, target / MODEL_FILE)
        return version

    def promote(self, name: str, version: str) -> None:
        self.version_dir(name, version)  # raises when unknown
        history = [v for v in self.history(name) if v != version] + [version]
        write_json_atomic(self.root / name / ACTIVE_FILE, {"active": version, "history": history})

    def rollback(self, name: str) -> str:
        """Make the previously promoted version active again; returns it."""
        history = self.history(name)
        if len(history) < 2:
            raise RegistryError(f"model '{name}' has no earlier promoted version to roll back to")
        history.pop()
        write_json_atomic(self.root / name / ACTIVE_FILE,
                          {"active": history[-1], "history": history})
        return history[-1]
