"""DMR's REST surface: model management (registry); the /engines routes live in dmr/engines.py."""

from __future__ import annotations

import contextlib

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from modelrunner.v1 import registry_pb2
from services.common.reference import InvalidReference, parse_reference
from services.gateway import errors
from services.gateway.bodies import read_body_model
from services.gateway.context import GatewayContext
from services.gateway.dmr import engines
from services.gateway.dmr.models import CreateRequest, PushBody
from services.gateway.dmr.package import package_upload
from services.gateway.dmr.transfers import stream_transfer
from services.gateway.dmr.verify import verify_store
from services.gateway.models_view import dmr_model
from services.gateway.openapi_bodies import (
    TRANSFER_TYPES,
    UPSTREAM_UNREACHABLE,
    json_body,
    model_schema,
    query,
)
from services.gateway.responses import json_response

__all__ = ["build_router"]

_RUNNING = "Docker Model Runner is running"
_TRUE = {"", "1", "true", "t", "yes"}
_FALSE = {"0", "false", "f", "no"}
# Model actions DMR has that this gateway's registry API does not offer (yet).
_UNSUPPORTED_ACTIONS = {"load", "repackage"}
_TEXT = {"type": "string"}
_BOOLEAN = {"type": "boolean"}


def _flag(request: Request, name: str) -> bool:
    """A boolean query parameter; a bare `?force` counts as true."""
    raw = request.query_params.get(name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise errors.InvalidRequest(f"query parameter {name} must be true or false", param=name)


def _bearer_token(request: Request) -> str:
    """The token of an `Authorization: Bearer <token>` header, passed to the upstream registry as
    DMR passes `bearer-token`; "" without one (the registry then uses its Docker config)."""
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def build_router(context: GatewayContext) -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def root() -> Response:
        return PlainTextResponse(_RUNNING)

    @router.get("/version")
    async def version() -> Response:
        return json_response({"version": context.version})

    @router.get("/models")
    async def list_models() -> Response:
        with errors.translate_rpc_errors("registry"):
            models = await context.registry.list_models()
        return json_response([dmr_model(model) for model in models])

    @router.post(
        "/models/create",
        openapi_extra=json_body(
            model_schema(CreateRequest), answers=TRANSFER_TYPES, failures=UPSTREAM_UNREACHABLE
        ),
    )
    async def create_model(request: Request) -> Response:
        """DMR's pull. A model whose tag is already in the store answers DMR's cache-hit line
        without asking the network (so it works offline); anything else is pulled."""
        create = await read_body_model(request, CreateRequest, context.settings.max_body_bytes)
        try:
            wanted = parse_reference(create.source).familiar
        except InvalidReference as exc:
            raise errors.InvalidRequest(f"Invalid model reference: {exc}", param="from") from None
        model = None
        with contextlib.suppress(errors.NotFound), errors.translate_rpc_errors("registry"):
            model = await context.registry.inspect_model(wanted)
        if model is not None and wanted in model.tags:
            line = {"type": "success", "message": f"Using cached model: {model.config.size}"}
            return Response(orjson.dumps(line) + b"\n", media_type="application/json")
        call = context.registry.pull(
            wanted,
            registry_pb2.RegistryCredentials(bearer_token=create.bearer_token),
            timeout=context.settings.transfer_timeout,
        )
        return await stream_transfer(request, call, "pull")

    # Before the `/models/{name:path}` routes, which would otherwise take "package" for a name.
    @router.post("/models/package", status_code=201)
    async def package_model(request: Request) -> Response:
        """DMR's `docker model package`, the GGUF as the raw body (shape: dmr/package.py)."""
        return await package_upload(request, context)

    # Our extension: re-hash every blob in the store (shape: dmr/verify.py).
    @router.post("/models/verify")
    async def verify_models() -> Response:
        return await verify_store(context)

    @router.post(
        "/models/{name:path}/push",
        openapi_extra=json_body(
            model_schema(PushBody),
            required=False,
            answers=TRANSFER_TYPES,
            failures=UPSTREAM_UNREACHABLE,
        ),
    )
    async def push_model(name: str, request: Request) -> Response:
        push = await read_body_model(request, PushBody, context.settings.max_body_bytes)
        call = context.registry.push(
            name,
            registry_pb2.RegistryCredentials(bearer_token=push.bearer_token),
            timeout=context.settings.transfer_timeout,
        )
        return await stream_transfer(request, call, "push")

    @router.post(
        "/models/{name:path}/tag",
        status_code=201,
        openapi_extra=query(("repo", _TEXT, True), ("tag", _TEXT, True)),
    )
    async def tag_model(name: str, request: Request) -> Response:
        repo = request.query_params.get("repo", "").strip()
        tag = request.query_params.get("tag", "").strip()
        if not repo or not tag:
            raise errors.InvalidRequest("missing repo or tag query parameter")
        target = f"{repo}:{tag}"
        with errors.translate_rpc_errors("registry"):
            await context.registry.tag_model(name, target)
        return json_response(
            {"message": f'Model tagged successfully with "{target}"', "target": target},
            status_code=201,
        )

    @router.post("/models/{name:path}", include_in_schema=False)
    async def other_model_action(name: str) -> Response:
        action = name.rsplit("/", 1)[-1]
        if action in _UNSUPPORTED_ACTIONS:
            raise errors.Unimplemented(f"/models/{action} is not supported by this gateway")
        raise errors.NotFound(f"unknown model action {action!r}")

    @router.get("/models/{name:path}")
    async def get_model(name: str, request: Request) -> Response:
        """The local model, or with `?remote=true` the registry's copy, read without pulling
        (an unsupported artifact is 422, as for a pull)."""
        if _flag(request, "remote"):
            credentials = registry_pb2.RegistryCredentials(bearer_token=_bearer_token(request))
            with errors.translate_rpc_errors("registry", precondition=errors.Unprocessable):
                model = await context.registry.inspect_remote(name, credentials)
        else:
            with errors.translate_rpc_errors("registry"):
                model = await context.registry.inspect_model(name)
        return json_response(dmr_model(model))

    # Before `DELETE /models/{name:path}`, which would take it for a model named "purge".
    @router.delete("/models/purge")
    async def purge_models() -> Response:
        with errors.translate_rpc_errors("registry", precondition=errors.Conflict):
            reply = await context.registry.purge()
        await context.scheduler.unload_deleted((), everything=True)
        return json_response(
            {"deleted_models": reply.deleted_models, "deleted_blobs": reply.deleted_blobs}
        )

    @router.delete("/models/{name:path}", openapi_extra=query(("force", _BOOLEAN, False)))
    async def delete_model(name: str, request: Request) -> Response:
        force = _flag(request, "force")
        with errors.translate_rpc_errors("registry", precondition=errors.Conflict):
            reply = await context.registry.delete_model(name, force=force)
        await context.scheduler.unload_deleted(list(reply.deleted))
        actions = [{"Untagged": tag} for tag in reply.untagged]
        actions.extend({"Deleted": model_id} for model_id in reply.deleted)
        return json_response(actions)

    router.include_router(engines.build_router(context))
    return router
