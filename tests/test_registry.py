"""ModelRegistry: versions on disk, the active one, promotion and rollback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tinymodel import build_tiny_model

from scrapvision.registry import ModelRegistry, RegistryError, RegistryFileError


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    return build_tiny_model(tmp_path / "build" / "m.onnx")


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models")


def test_add_numbers_versions_and_sorts_them_numerically(registry: ModelRegistry,
                                                         onnx_file: Path) -> None:
    assert registry.next_version("tiny") == "v1"
    for _ in range(10):
        registry.add("tiny", onnx_file)
    assert registry.versions("tiny") == [f"v{n}" for n in range(1, 11)]
    assert registry.model_path("tiny", "v10").read_bytes() == onnx_file.read_bytes()
    assert registry.names() == ["tiny"]


def test_without_active_file_the_newest_version_is_active(registry: ModelRegistry,
                                                          onnx_file: Path) -> None:
    registry.add("tiny", onnx_file)
    registry.add("tiny", onnx_file)
    assert registry.active("tiny") == "v2"
    assert registry.model_path("tiny") == registry.root / "tiny" / "v2" / "model.onnx"


def test_promote_then_rollback_steps_back_through_history(registry: ModelRegistry,
                                                          onnx_file: Path) -> None:
    for _ in range(3):
        registry.add("tiny", onnx_file)
    registry.promote("tiny", "v1")
    registry.promote("tiny", "v3")
    registry.promote("tiny", "v2")
    assert registry.history("tiny") == ["v1", "v3", "v2"]
    assert registry.rollback("tiny") == "v3"
    assert registry.active("tiny") == "v3"
    assert registry.rollback("tiny") == "v1"
    with pytest.raises(RegistryError, match="no earlier promoted version"):
        registry.rollback("tiny")
    state = json.loads((registry.root / "tiny" / "active.json").read_text())
    assert state == {"active": "v1", "history": ["v1"]}


def test_promoting_again_moves_a_version_to_the_end(registry: ModelRegistry,
                                                    onnx_file: Path) -> None:
    registry.add("tiny", onnx_file)
    registry.add("tiny", onnx_file)
    registry.promote("tiny", "v1")
    registry.promote("tiny", "v2")
    registry.promote("tiny", "v1")
    assert registry.history("tiny") == ["v2", "v1"]


def test_unknown_model_and_version_are_refused(registry: ModelRegistry,
                                               onnx_file: Path) -> None:
    for unknown in (registry.active, registry.rollback):
        with pytest.raises(RegistryError, match="no model named 'ghost'"):
            unknown("ghost")
    registry.add("tiny", onnx_file)
    with pytest.raises(RegistryError, match="has no version 'v5'"):
        registry.promote("tiny", "v5")
    assert not (registry.root / "tiny" / "active.json").exists()


def test_card_is_none_until_written(registry: ModelRegistry, onnx_file: Path) -> None:
    registry.add("tiny", onnx_file)
    assert registry.card("tiny") is None
    (registry.version_dir("tiny") / "card.json").write_text('{"metrics": {"top1": 0.9}}')
    assert registry.card("tiny", "v1") == {"metrics": {"top1": 0.9}}


def test_folders_that_are_not_versions_are_ignored(registry: ModelRegistry,
                                                   onnx_file: Path) -> None:
    registry.add("tiny", onnx_file)
    (registry.root / "tiny" / "scratch").mkdir()
    (registry.root / "tiny" / "v7").mkdir()  # no model.onnx: an interrupted copy
    (registry.root / ".cache" / "v1").mkdir(parents=True)
    assert registry.versions("tiny") == ["v1"]
    assert registry.names() == ["tiny"]
    assert ModelRegistry(registry.root / "absent").names() == []


@pytest.mark.parametrize("name", ["../outside", "a/b", ".hidden", ""])
def test_names_that_are_paths_are_refused(registry: ModelRegistry, onnx_file: Path,
                                          name: str) -> None:
    with pytest.raises(RegistryError, match="invalid model name"):
        registry.add(name, onnx_file)
    with pytest.raises(RegistryError, match="invalid model name"):
        registry.model_path(name)
    assert not (registry.root.parent / "outside").exists()


@pytest.mark.parametrize("version", ["latest", "1", "v1/../../x"])
def test_versions_that_would_be_invisible_are_refused(registry: ModelRegistry,
                                                      onnx_file: Path, version: str) -> None:
    with pytest.raises(RegistryError, match="invalid version"):
        registry.add("tiny", onnx_file, version=version)


def test_adding_an_existing_version_or_missing_file_is_refused(registry: ModelRegistry,
                                                               onnx_file: Path,
                                                               tmp_path: Path) -> None:
    registry.add("tiny", onnx_file, version="v1")
    with pytest.raises(RegistryError, match="already has a version 'v1'"):
        registry.add("tiny", onnx_file, version="v1")
    with pytest.raises(RegistryError, match="does not exist"):
        registry.add("tiny", tmp_path / "missing.onnx")
    assert registry.next_version("tiny") == "v2"
    assert not (registry.root / "tiny" / "v2").exists()


def test_promotion_leaves_no_temporary_files(registry: ModelRegistry, onnx_file: Path) -> None:
    registry.add("tiny", onnx_file)
    registry.promote("tiny", "v1")
    registry.promote("tiny", "v1")
    assert sorted(p.name for p in (registry.root / "tiny").iterdir()) == ["active.json", "v1"]


def test_active_file_keeps_its_mode_and_is_readable_when_new(registry: ModelRegistry,
                                                             onnx_file: Path) -> None:
    registry.add("tiny", onnx_file)
    registry.add("tiny", onnx_file)
    registry.promote("tiny", "v1")
    active = registry.root / "tiny" / "active.json"
    assert active.stat().st_mode & 0o777 == 0o644
    active.chmod(0o640)
    registry.promote("tiny", "v2")
    assert active.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("content", ['{"active": "v1", "hist', "[]", '{"active": "v1"}',
                                     '{"active": "../v1", "history": []}', "\xff"])
def test_a_damaged_active_file_is_a_registry_file_error_naming_it(
        registry: ModelRegistry, onnx_file: Path, content: str) -> None:
    registry.add("tiny", onnx_file)
    active_file = registry.root / "tiny" / "active.json"
    active_file.write_bytes(content.encode("latin-1"))
    for read in (registry.active, registry.history):
        with pytest.raises(RegistryFileError, match=str(active_file)):
            read("tiny")


@pytest.mark.parametrize("content", [b"{broken", b"[1, 2]", b"\xff\xfe"])
def test_a_damaged_card_is_a_registry_file_error_naming_it(
        registry: ModelRegistry, onnx_file: Path, content: bytes) -> None:
    registry.add("tiny", onnx_file)
    card_file = registry.root / "tiny" / "v1" / "card.json"
    card_file.write_bytes(content)
    with pytest.raises(RegistryFileError, match="evaluate"):
        registry.card("tiny", "v1")


def test_unreadable_registry_files_are_registry_file_errors(
        registry: ModelRegistry, onnx_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry.add("tiny", onnx_file)
    registry.promote("tiny", "v1")
    (registry.root / "tiny" / "v1" / "card.json").write_text("{}")
    read_bytes, iterdir = Path.read_bytes, Path.iterdir

    def refuse_files(path: Path) -> bytes:
        if path.name in ("active.json", "card.json"):
            raise PermissionError(13, "Permission denied")
        return read_bytes(path)

    def refuse_folder(path: Path):
        if path.name == "tiny":
            raise PermissionError(13, "Permission denied")
        return iterdir(path)

    monkeypatch.setattr(Path, "read_bytes", refuse_files)
    with pytest.raises(RegistryFileError, match="active.json cannot be read: Permission denied"):
        registry.active("tiny")
    with pytest.raises(RegistryFileError, match="card.json cannot be read"):
        registry.card("tiny", "v1")
    monkeypatch.setattr(Path, "iterdir", refuse_folder)
    with pytest.raises(RegistryFileError, match="tiny cannot be read"):
        registry.versions("tiny")
    assert registry.names() == ["tiny"]  # still listed: its lines say why they are not ready
