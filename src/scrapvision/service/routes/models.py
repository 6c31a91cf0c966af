"""Models: list with cards, load a version (zero-downtime swap), roll back."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from scrapvision.engine import ModelLoadError
from scrapvision.registry import RegistryError, RegistryFileError
from scrapvision.service.auth import require_role
from scrapvision.service.models import LoadedModel, ModelManager

router = APIRouter(prefix="/v1/models", tags=["models"])


class LoadRequest(BaseModel):
    version: str | None = Field(None, pattern=r"^v\d+$",
                                description="version to serve; default: the active one")


def _manager(request: Request) -> ModelManager:
    return request.app.state.models


def _summary(name: str, loaded: LoadedModel) -> dict[str, Any]:
    return {"name": name, "version": loaded.version, "classes": loaded.info.class_names}


@router.get("", dependencies=[Depends(require_role("qa"))])
async def list_models(request: Request) -> list[dict[str, Any]]:
    """Models this worker serves, with versions available, history and model card."""
    return _manager(request).describe()


@router.post("/{name}/load", dependencies=[Depends(require_role("admin"))],
             responses={404: {"description": "unknown model or version"},
                        422: {"description": "the model or registry file is unusable; old "
                                              "one serves"}})
async def load_model(name: str, request: Request,
                     body: LoadRequest | None = None) -> dict[str, Any]:
    """Load a version, make it active and swap it in; frames in flight finish on the old
    session. Every worker process follows within `model_poll_s`."""
    try:
        loaded = await _manager(request).load(name, body.version if body else None)
    except RegistryFileError as exc:
        raise HTTPException(422, detail=f"model refused, previous version keeps serving: {exc}")
    except RegistryError as exc:
        raise HTTPException(404, detail=str(exc)) from None
    except ModelLoadError as exc:
        raise HTTPException(422, detail=f"model refused, previous version keeps serving: {exc}")
    return _summary(name, loaded)


@router.post("/{name}/rollback", dependencies=[Depends(require_role("admin"))],
             responses={404: {"description": "unknown model"},
                        409: {"description": "no earlier version to roll back to"},
                        422: {"description": "the earlier version or the registry file is "
                                              "unusable"}})
async def rollback_model(name: str, request: Request) -> dict[str, Any]:
    """Serve the previously promoted version again."""
    manager = _manager(request)
    try:
        manager.slot(name)
    except RegistryError as exc:
        raise HTTPException(404, detail=str(exc)) from None
    try:
        loaded = await manager.rollback(name)
    except RegistryFileError as exc:
        raise HTTPException(422, detail=f"rollback refused, current version keeps serving: {exc}")
    except RegistryError as exc:
        raise HTTPException(409, detail=str(exc)) from None
    except ModelLoadError as exc:
        raise HTTPException(422, detail=f"rollback refused, current version keeps serving: {exc}")
    return _summary(name, loaded)
