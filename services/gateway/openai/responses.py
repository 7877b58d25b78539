"""OpenAI's Responses API, as DMR serves it, on top of llama-server's chat completions.

For each prefix `/responses`, `/v1/responses`, `/engines/responses`, `/engines/v1/responses` and
`/engines/llama.cpp/v1/responses`:

    POST   <prefix>                       create (streamed as Responses events with stream: true)
    GET    <prefix>/{id}                  a stored response
    GET    <prefix>/{id}/input_items      its input items (limit, order, after)
    DELETE <prefix>/{id}                  forget it

A create request is translated into a chat completions body (responses_translate.py) and runs
through the same hot path as `/v1/chat/completions` (upstream.py), with the routing hints computed
from the translated body, so prefix and session affinity, X-Priority and X-Worker-Tags work here
too. Responses with `store` (the default) are kept in a bounded in-memory store owned by this
router (responses_store.py), one per app; `previous_response_id` continues one's conversation.
Errors are in OpenAI's shape; unknown ids are 404.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from modelrunner.v1 import common_pb2
from services.common.clock import SystemClock
from services.gateway import errors
from services.gateway.bodies import read_json
from services.gateway.context import GatewayContext
from services.gateway.hints import routing_hints
from services.gateway.inference import InferenceRequest, request_id_from
from services.gateway.models_view import BACKEND_NAME
from services.gateway.openai.responses_asgi import DeferredResponse, EventStreamResponse
from services.gateway.openai.responses_request import CreateRequest, Item, new_id, parse_create
from services.gateway.openai.responses_store import ResponseStore, StoredResponse
from services.gateway.openai.responses_stream import ResponseEvents
from services.gateway.openai.responses_translate import chat_body, new_response, response_from_chat
from services.gateway.openapi_bodies import RESPONSES_CREATE, STREAM_TYPES, json_body
from services.gateway.responses import error_response, json_response
from services.gateway.upstream import call_json, open_events

__all__ = ["PREFIXES", "build_router"]

_log = logging.getLogger(__name__)

PREFIXES = (
    f"/engines/{BACKEND_NAME}/v1/responses",
    "/engines/v1/responses",
    "/engines/responses",
    "/v1/responses",
    "/responses",
)

# GATEWAY_RESPONSES_MAX_STORED and GATEWAY_RESPONSES_MAX_STORED_BYTES.

_CHAT = common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS
_DEFAULT_PAGE = 20
_MAX_PAGE = 100


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A create request, translated and ready to run."""

    create: CreateRequest
    history: tuple[Item, ...]
    upstream: InferenceRequest
    response: dict[str, Any]

    @property
    def request_id(self) -> str:
        return self.upstream.request_id


def _sse(event: dict[str, Any]) -> bytes:
    kind = str(event["type"]).encode()
    return b"event: " + kind + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def _not_found(response_id: str) -> errors.NotFound:
    return errors.NotFound(f"Response with id '{response_id}' not found.", param="response_id")


def _page_size(raw: str | None) -> int:
    if raw is None:
        return _DEFAULT_PAGE
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_PAGE:
        raise errors.InvalidRequest(f"limit must be between 1 and {_MAX_PAGE}", param="limit")
    return int(raw)


def _page(items: Iterable[Item], request: Request) -> dict[str, Any]:
    """OpenAI's list page: newest first unless order=asc, `after` an item id."""
    query = request.query_params
    limit = _page_size(query.get("limit"))
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise errors.InvalidRequest("order must be asc or desc", param="order")
    ordered = list(items) if order == "asc" else list(items)[::-1]
    start = 0
    after = query.get("after")
    if after:
        ids = [item.get("id") for item in ordered]
        if after not in ids:
            raise errors.InvalidRequest(f"no input item with id '{after}'", param="after")
        start = ids.index(after) + 1
    data = ordered[start : start + limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0].get("id") if data else None,
        "last_id": data[-1].get("id") if data else None,
        "has_more": start + limit < len(ordered),
    }


def build_router(context: GatewayContext) -> APIRouter:
    settings = context.settings
    store = ResponseStore(
        max_entries=settings.responses_max_stored, max_bytes=settings.responses_max_stored_bytes
    )
    clock = SystemClock()
    router = APIRouter()

    async def prepare(request: Request, request_id: str) -> _Prepared:
        create = parse_create(await read_json(request, settings.max_body_bytes))
        history: tuple[Item, ...] = ()
        if create.previous_response_id is not None:
            previous = store.get(create.previous_response_id)
            if previous is None:
                raise errors.NotFound(
                    f"Previous response with id '{create.previous_response_id}' not found.",
                    param="previous_response_id",
                )
            history = previous.conversation()
        chat = chat_body(create, history)
        upstream = InferenceRequest(
            request_id=request_id,
            endpoint=_CHAT,
            model=create.model,
            stream=create.stream,
            body=orjson.dumps(chat),
            hints=routing_hints(request.headers, chat, _CHAT, settings),
        )
        response = new_response(create, new_id("resp"), int(clock.wall()))
        return _Prepared(create, history, upstream, response)

    def keep(prepared: _Prepared, final: dict[str, Any] | None) -> None:
        if final is not None and prepared.create.store:
            store.put(StoredResponse.create(final, prepared.create.input_items, prepared.history))

    async def answer(prepared: _Prepared) -> Response:
        try:
            completion = await call_json(context.inference, prepared.upstream)
            final = response_from_chat(prepared.response, completion)
        except errors.GatewayError as err:
            return error_response(err, prepared.request_id)
        keep(prepared, final)
        reply = json_response(final)
        reply.headers["X-Request-ID"] = prepared.request_id
        return reply

    async def stream(prepared: _Prepared) -> Response:
        upstream = contextlib.AsyncExitStack()
        try:
            # Opened before answering, so failures up to llama-server's head get a real status.
            source = await upstream.enter_async_context(
                open_events(context.inference, prepared.upstream)
            )
        except errors.GatewayError as err:
            await upstream.aclose()
            return error_response(err, prepared.request_id)
        translator = ResponseEvents(prepared.response)

        async def events() -> AsyncGenerator[bytes, None]:
            for event in translator.start():
                yield _sse(event)
            try:
                async for chunk in source.events():
                    for event in translator.feed(chunk):
                        yield _sse(event)
            except errors.GatewayError as err:
                _log.warning(
                    "request %s: response stream failed: %s", prepared.request_id, err.message
                )
                ending = translator.fail(err.message)
            else:
                ending = translator.finish()
            # The lease goes back before the last events are written.
            await upstream.aclose()
            keep(prepared, translator.final_response)
            for event in ending:
                yield _sse(event)

        headers = {"X-Request-ID": prepared.request_id, "X-Worker-Id": source.worker_id}
        return EventStreamResponse(events(), upstream.aclose, headers)

    async def create(request: Request) -> Response:
        request_id = request_id_from(request.headers)
        try:
            prepared = await prepare(request, request_id)
        except errors.GatewayError as err:
            return error_response(err, request_id)
        if prepared.create.stream:
            return await stream(prepared)
        return DeferredResponse(lambda: answer(prepared))

    def stored(response_id: str) -> StoredResponse:
        entry = store.get(response_id)
        if entry is None:
            raise _not_found(response_id)
        return entry

    async def retrieve(response_id: str) -> Response:
        return json_response(stored(response_id).response)

    async def input_items(response_id: str, request: Request) -> Response:
        return json_response(_page(stored(response_id).input_items, request))

    async def delete(response_id: str) -> Response:
        if not store.delete(response_id):
            raise _not_found(response_id)
        return json_response({"id": response_id, "object": "response.deleted", "deleted": True})

    for prefix in PREFIXES:
        documented = prefix == PREFIXES[0]
        router.add_api_route(
            prefix,
            create,
            methods=["POST"],
            include_in_schema=documented,
            openapi_extra=json_body(RESPONSES_CREATE, answers=STREAM_TYPES),
        )
        one = prefix + "/{response_id}"
        router.add_api_route(one, retrieve, methods=["GET"], include_in_schema=documented)
        router.add_api_route(
            one + "/input_items", input_items, methods=["GET"], include_in_schema=documented
        )
        router.add_api_route(one, delete, methods=["DELETE"], include_in_schema=documented)
    return router
