"""The shared gRPC bootstrap: health, reflection (what grpcurl uses) and graceful shutdown."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from modelrunner.v1 import scheduler_pb2_grpc
from services.common.grpc_client import open_channel
from services.common.grpc_server import GrpcServer

SERVICE = "modelrunner.v1.Scheduler"


async def _list_services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names: set[str] = set()
    async for reply in call:
        names.update(service.name for service in reply.list_services_response.service)
    return names


async def test_health_reflection_and_graceful_stop() -> None:
    server = GrpcServer("127.0.0.1:0", [SERVICE])
    # Any servicer will do; reflection lists what the server was told it serves.
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(
        scheduler_pb2_grpc.SchedulerServicer(), server.server
    )
    port = await server.start()
    try:
        async with open_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", SERVICE):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert {SERVICE, "grpc.health.v1.Health"} <= await _list_services(channel)
    finally:
        await server.stop(grace=1.0)
    async with open_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        assert failure.value.code() in {
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        }


async def test_unbindable_address_fails_loudly() -> None:
    server = GrpcServer("256.0.0.1:1", [SERVICE])
    with pytest.raises((OSError, RuntimeError)):
        await server.start()
    await server.stop(grace=0)
