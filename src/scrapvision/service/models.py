"""Loaded models, zero-downtime swaps, and keeping every worker process on the same version.

A `ModelSlot` holds the `LoadedModel` currently serving one model name. A frame takes a
reference to it when its inference starts, so swapping the reference lets requests in
flight finish on the old session (which is freed once the last of them drops it) while new
ones use the new one: no lock, no request fails.

The registry's `active.json` is the single source of truth across worker processes: an
admin load/rollback in one worker writes it (after the new version loaded and fitted every
line that uses it), and every worker polls it (`ModelManager.watch`) and swaps to what it
names. A version that fails to load is refused with a clear error and remembered, so the
old model keeps serving and the failure is not retried every poll.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from scrapvision.engine import Engine, ModelLoadError
from scrapvision.modelmeta import ModelInfo
from scrapvision.policy import SortPolicy
from scrapvision.registry import ModelRegistry, RegistryError
from scrapvision.service import metrics
from scrapvision.service.inference import InferenceWorkers
from scrapvision.settings import LineSettings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class LoadedModel:
    """One model version ready to serve: its session, card, and each line's policy."""

    version: str
    engine: Engine
    card: dict[str, Any] | None
    policies: dict[str, SortPolicy]
    loaded_at: float = field(default_factory=time.time)

    @property
    def info(self) -> ModelInfo:
        return self.engine.info


@dataclass(slots=True)
class ModelSlot:
    """The serving state of one model name; `workers` run its inference (one pool per model)."""

    name: str
    lines: dict[str, LineSettings]
    workers: InferenceWorkers
    current: LoadedModel | None = None
    error: str | None = None  # why the last load failed, shown in /v1/models and /readyz
    refused_version: str | None = None
    registry_error: str | None = None  # why active.json could not be read at the last poll


class ModelManager:
    def __init__(self, registry: ModelRegistry, lines: dict[str, LineSettings],
                 ort_threads: int = 1, inference_threads: int = 1,
                 max_batch: int = 1, standby: bool = False, on_loop: bool = False) -> None:
        self.registry = registry
        self.ort_threads = ort_threads
        self.slots: dict[str, ModelSlot] = {}
        for line_name, line in lines.items():
            slot = self.slots.get(line.model)
            if slot is None:
                slot = self.slots[line.model] = ModelSlot(
                    line.model, {}, InferenceWorkers(line.model, inference_threads, max_batch,
                                                     standby, on_loop))
            slot.lines[line_name] = line
        self._swap_lock = asyncio.Lock()

    def slot(self, name: str) -> ModelSlot:
        try:
            return self.slots[name]
        except KeyError:
            raise RegistryError(f"no line serves a model named '{name}'") from None

    def _build(self, slot: ModelSlot, version: str) -> LoadedModel:
        """Load and check `version` for every line of the slot (blocking: run in a thread)."""
        engine = Engine(self.registry.model_path(slot.name, version), self.ort_threads)
        card = self.registry.card(slot.name, version)
        try:
            policies = {line_name: SortPolicy(line, engine.info.class_names, card)
                        for line_name, line in slot.lines.items()}
        except ValueError as exc:
            raise ModelLoadError(f"{slot.name} {version}: {exc}") from exc
        return LoadedModel(version, engine, card, policies)

    def _install(self, slot: ModelSlot, loaded: LoadedModel) -> None:
        old = slot.current
        slot.current, slot.error, slot.refused_version = loaded, None, None
        if old is not None:
            metrics.MODEL_INFO.labels(slot.name, old.version).set(0)
        metrics.MODEL_INFO.labels(slot.name, loaded.version).set(1)
        log.info("serving model", extra={"model": slot.name, "version": loaded.version,
                                         "replaced": old.version if old else None})

    def _try_install(self, slot: ModelSlot, version: str) -> None:
        """Build and swap in `version`; on failure keep what serves and remember why."""
        try:
            self._install(slot, self._build(slot, version))
        except (ModelLoadError, RegistryError) as exc:
            slot.error, slot.refused_version = str(exc), version
            log.error("model refused; the previous version (if any) keeps serving",
                      extra={"model": slot.name, "version": version, "error": str(exc)})

    def load_all(self) -> None:
        """Startup: load each model's active version; a failure leaves its lines not ready."""
        for slot in self.slots.values():
            try:
                version = self.registry.active(slot.name)
            except RegistryError as exc:
                slot.error = str(exc)
                log.error("model not found", extra={"model": slot.name, "error": str(exc)})
                continue
            self._try_install(slot, version)

    async def load(self, name: str, version: str | None = None) -> LoadedModel:
        """Load `version` (default: the registry's active one), make it active, swap it in.

        Raises RegistryError (unknown model/version) or ModelLoadError (unusable file);
        either way the current model keeps serving.
        """
        slot = self.slot(name)
        async with self._swap_lock:
            version = version or self.registry.active(name)
            loaded = await run_in_threadpool(self._build, slot, version)
            if self.registry.active(name) != version:
                self.registry.promote(name, version)
            self._install(slot, loaded)
            return loaded

    async def rollback(self, name: str) -> LoadedModel:
        """Serve the previously promoted version again (loaded before the registry changes)."""
        slot = self.slot(name)
        async with self._swap_lock:
            history = self.registry.history(name)
            if len(history) < 2:
                raise RegistryError(f"model '{name}' has no earlier promoted version")
            loaded = await run_in_threadpool(self._build, slot, history[-2])
            self.registry.rollback(name)
            self._install(slot, loaded)
            return loaded

    async def sync_with_registry(self) -> None:
        """Swap to whatever `active.json` names now (another worker may have changed it).

        Each model on its own: one whose registry files cannot be read never holds back
        another's promotion.
        """
        for slot in self.slots.values():
            try:
                await self._sync_slot(slot)
            except Exception as exc:  # a failing watcher would leave this model on its version
                if _note_problem(slot, f"model watch failed: {exc!r}"):
                    log.exception("model watch failed; trying again at the next poll",
                                  extra={"model": slot.name})

    async def _sync_slot(self, slot: ModelSlot) -> None:
        try:
            active = self.registry.active(slot.name)
        except RegistryError as exc:  # deleted, damaged, unreadable or mid-edit by hand
            if _note_problem(slot, str(exc)):
                log.warning("registry not readable; the current version keeps serving",
                            extra={"model": slot.name, "error": str(exc)})
            return
        slot.registry_error = None
        serving = slot.current.version if slot.current else None
        if active in (serving, slot.refused_version):
            return
        async with self._swap_lock:
            await run_in_threadpool(self._try_install, slot, active)

    async def watch(self, interval_s: float) -> None:
        """Poll the registry forever (a background task of each worker)."""
        while True:
            await asyncio.sleep(interval_s)
            await self.sync_with_registry()

    def close(self) -> None:
        for slot in self.slots.values():
            slot.workers.close()

    def describe(self) -> list[dict[str, Any]]:
        """`GET /v1/models`: what each worker serves, with the model card."""
        out = []
        for slot in self.slots.values():
            loaded = slot.current
            out.append({
                "name": slot.name,
                "lines": sorted(slot.lines),
                "version": loaded.version if loaded else None,
                "active": _safe(self.registry.active, slot.name),
                "versions": _safe(self.registry.versions, slot.name),
                "history": _safe(self.registry.history, slot.name),
                "loaded_at": loaded.loaded_at if loaded else None,
                "info": loaded.info.model_dump() if loaded else None,
                "card": loaded.card if loaded else None,
                "error": slot.error,
                "registry_error": slot.registry_error,
            })
        return out


def _note_problem(slot: ModelSlot, problem: str) -> bool:
    """Show `problem` in /v1/models; True when it is new, so it is logged once, not every poll."""
    new = problem != slot.registry_error
    slot.registry_error = problem
    return new


def _safe(func: Any, *args: Any) -> Any:
    try:
        return func(*args)
    except RegistryError:
        return None
