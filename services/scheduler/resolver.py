"""Model resolution: the client's model string -> the registry's Model, on every Assign.

This module asks the registry every time; resolver_cache.py keeps answers for a couple of
seconds in front of it, because the call sits on the path to the first token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import grpc

from modelrunner.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from services.common.grpc_client import open_channel
from services.common.internal_security import InternalSecurity
from services.common.reference import InvalidReference, is_model_id, parse_reference
from services.common.request_id import request_id_client_interceptors
from services.scheduler.errors import (
    InvalidModelReference,
    ModelNotFound,
    RegistryUnavailable,
)

__all__ = ["GrpcModelResolver", "ModelResolver", "ResolvedModel", "normalize_reference"]


@dataclass(frozen=True)
class ResolvedModel:
    model_id: str
    # What the user sees, e.g. "ai/smollm2:latest".
    reference: str
    # Passed on to Worker.Load as is; the scheduler reads only `id`.
    model: common_pb2.Model


class ModelResolver(Protocol):
    async def resolve(self, text: str, *, timeout: float) -> ResolvedModel:
        """Raises ModelNotFound, InvalidModelReference or RegistryUnavailable."""
        ...

    async def aclose(self) -> None: ...


def normalize_reference(text: str) -> str:
    """`smollm2` -> `ai/smollm2:latest`; ids are returned unchanged. Raises InvalidModelReference."""
    if is_model_id(text):
        return text.strip()
    try:
        return parse_reference(text).familiar
    except InvalidReference as exc:
        raise InvalidModelReference(str(exc)) from exc


def _display_reference(requested: str, model: common_pb2.Model) -> str:
    if not is_model_id(requested):
        return requested
    return model.tags[0] if model.tags else model.id


class GrpcModelResolver:
    """Resolves through Registry.InspectModel."""

    def __init__(self, registry_address: str, *, security: InternalSecurity | None = None) -> None:
        self._channel = open_channel(
            registry_address, interceptors=request_id_client_interceptors(), security=security
        )
        self._stub = registry_pb2_grpc.RegistryStub(self._channel)

    async def resolve(self, text: str, *, timeout: float) -> ResolvedModel:
        reference = normalize_reference(text)
        try:
            model = await self._stub.InspectModel(
                registry_pb2.InspectModelRequest(reference=reference), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code is grpc.StatusCode.NOT_FOUND:
                raise ModelNotFound(f"model {reference} not found") from exc
            if code is grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidModelReference(exc.details() or f"invalid reference {text!r}") from exc
            raise RegistryUnavailable(
                f"registry could not resolve {reference}: {code.name} {exc.details() or ''}".strip()
            ) from exc
        return ResolvedModel(
            model_id=model.id, reference=_display_reference(reference, model), model=model
        )

    async def aclose(self) -> None:
        await self._channel.close()
