"""What the OpenAPI document says about request bodies the routes read themselves.

The hot routes read raw bytes (bodies.py) so that nothing re-parses a body the worker forwards
unchanged; FastAPI then knows nothing of their bodies. These descriptions go into the document
only (`openapi_extra`), never into request handling: clients and fuzzers (tests/fuzz) learn the
real shapes while the hot path stays as it is. Bodies with a pydantic wire type are described
from it, so the document cannot drift from what the route validates; the OpenAI shapes, which
the gateway forwards without a wire type, are written out here with the fields it acts on.

Only plain JSON Schema goes in (no `$ref`, no discriminator mappings): every `$defs` reference of
a pydantic schema is inlined, so the document stands alone for any OpenAPI tool.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

__all__ = [
    "CHAT_COMPLETIONS",
    "COMPLETIONS",
    "CONFIGURE",
    "EMBEDDINGS",
    "RESPONSES_CREATE",
    "STREAM_TYPES",
    "TRANSFER_TYPES",
    "UPSTREAM_UNREACHABLE",
    "json_body",
    "model_schema",
    "query",
]

Schema = dict[str, Any]

# What a route that can stream answers with: JSON, or server-sent events when streaming.
STREAM_TYPES = ("application/json", "text/event-stream")
# Pulls and pushes talk to a registry outside; when it cannot be reached that is the answer.
UPSTREAM_UNREACHABLE: Mapping[int, str] = {
    503: "the upstream registry cannot be reached (offline, DNS, refused)"
}
# DMR's pull/push progress lines: JSON lines when the client accepts JSON, else plain text.
TRANSFER_TYPES = ("application/json", "text/plain")

_MODEL: Schema = {"type": "string", "examples": ["ai/smollm2"]}
_STRINGS: Schema = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_SAMPLING: Schema = {
    "stream": {"type": "boolean"},
    "max_tokens": {"type": "integer", "minimum": 1},
    "temperature": {"type": "number", "minimum": 0},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "seed": {"type": "integer"},
    "stop": _STRINGS,
}

CHAT_COMPLETIONS: Schema = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": _MODEL,
        "messages": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["role"],
                "properties": {
                    "role": {
                        "type": "string",
                        "enum": ["system", "developer", "user", "assistant", "tool"],
                    },
                    "content": {
                        "anyOf": [
                            {"type": "string"},
                            {"type": "array", "items": {"type": "object"}},
                            {"type": "null"},
                        ]
                    },
                    "tool_call_id": {"type": "string"},
                    "tool_calls": {"type": "array", "items": {"type": "object"}},
                },
            },
        },
        **_SAMPLING,
        "tools": {"type": "array", "items": {"type": "object"}},
        "tool_choice": {"anyOf": [{"type": "string"}, {"type": "object"}]},
        "response_format": {"type": "object"},
        "user": {"type": "string"},
    },
}

COMPLETIONS: Schema = {
    "type": "object",
    "required": ["model", "prompt"],
    "properties": {"model": _MODEL, "prompt": _STRINGS, **_SAMPLING, "echo": {"type": "boolean"}},
}

EMBEDDINGS: Schema = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": _MODEL,
        "input": _STRINGS,
        "encoding_format": {"type": "string", "enum": ["float", "base64"]},
        "dimensions": {"type": "integer", "minimum": 1},
    },
}

RESPONSES_CREATE: Schema = {
    "type": "object",
    "required": ["model"],
    "properties": {
        "model": _MODEL,
        "input": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
        "instructions": {"type": "string"},
        "max_output_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "stream": {"type": "boolean"},
        "store": {"type": "boolean"},
        "previous_response_id": {"type": "string"},
        "tools": {"type": "array", "items": {"type": "object"}},
        "tool_choice": {"anyOf": [{"type": "string"}, {"type": "object"}]},
        "parallel_tool_calls": {"type": "boolean"},
        "text": {"type": "object"},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "user": {"type": "string"},
        "seed": {"type": "integer"},
    },
}

# dmr/configure.py refuses unknown keys, so the document does too.
CONFIGURE: Schema = {
    "type": "object",
    "required": ["model"],
    "additionalProperties": False,
    "properties": {
        "model": _MODEL,
        "mode": {"type": "string", "enum": ["completion", "embedding"]},
        "context-size": {"type": "integer", "minimum": -1},
        "runtime-flags": {"type": "array", "items": {"type": "string"}},
        "raw-runtime-flags": {"type": "string"},
        "keep_alive": {"anyOf": [{"type": "string"}, {"type": "number"}]},
        "required-tags": {"type": "object", "additionalProperties": {"type": "string"}},
        "min-replicas": {"type": "integer", "minimum": 0},
        "max-replicas": {"type": "integer", "minimum": 0},
        "parallel": {"type": "integer", "minimum": 0},
    },
}


def model_schema(model: type[BaseModel]) -> Schema:
    """The JSON schema of a pydantic wire type (by alias, as clients write it), standalone."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    definitions = schema.pop("$defs", {})
    inlined: Schema = _inline(schema, definitions)
    return inlined


def _inline(node: Any, definitions: Mapping[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inline(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    reference = node.get("$ref")
    if isinstance(reference, str):
        # The wire types are not recursive, so inlining ends.
        return _inline(definitions[reference.rsplit("/", 1)[-1]], definitions)
    # OpenAPI's discriminator maps tags to `$ref`s that no longer exist once inlined; `const`
    # on each branch's tag says the same in plain JSON Schema.
    return {
        key: _inline(value, definitions) for key, value in node.items() if key != "discriminator"
    }


def json_body(
    schema: Schema,
    *,
    required: bool = True,
    answers: tuple[str, ...] = (),
    failures: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """`openapi_extra` for a route that reads a JSON body of `schema` itself; `answers` lists the
    media types of its 200 when it can stream (STREAM_TYPES), `failures` the server-side
    statuses it answers by design (e.g. UPSTREAM_UNREACHABLE), with what each means."""
    responses: dict[str, Any] = {}
    if answers:
        responses["200"] = {"content": {media: {} for media in answers}}
    for status, description in (failures or {}).items():
        responses[str(status)] = {"description": description}
    extra: dict[str, Any] = {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": schema}},
        }
    }
    if responses:
        extra["responses"] = responses
    return extra


def query(*parameters: tuple[str, Schema, bool]) -> dict[str, Any]:
    """`openapi_extra` for query parameters a route reads from the request itself:
    (name, schema, required) each."""
    return {
        "parameters": [
            {"name": name, "in": "query", "required": required, "schema": schema}
            for name, schema, required in parameters
        ]
    }
