"""OpenAI's Responses API (being written)."""

from __future__ import annotations

from fastapi import APIRouter

from services.gateway.context import GatewayContext

__all__ = ["build_router"]


def build_router(context: GatewayContext) -> APIRouter:
    return APIRouter()
