"""Wire types of DMR's request bodies (pydantic, at the edge only)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CreateRequest", "PushBody", "UnloadRequest"]


class UnloadRequest(BaseModel):
    """`POST /engines/unload`: `{"all": true}` or `{"models": [...]}`; `backend` as DMR sends it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    all: bool = False
    backend: str = ""
    models: list[str] = Field(default_factory=list)


class CreateRequest(BaseModel):
    """`POST /models/create`: `{"from": "ai/smollm2", "bearer-token": "..."}`."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    source: str = Field(alias="from", min_length=1)
    bearer_token: str = Field(default="", alias="bearer-token")


class PushBody(BaseModel):
    """`POST /models/{name}/push`: optional `{"bearer-token": "..."}`."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    bearer_token: str = Field(default="", alias="bearer-token")
