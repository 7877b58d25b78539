"""The bounded worker channel cache: shared, closed only when idle, never leaked."""

from __future__ import annotations

from typing import Any

import grpc

from services.gateway.clients import WorkerChannels


class FakeChannel:
    """Enough of grpc.aio.Channel for a WorkerStub and the cache."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.closed = False
        self.state = grpc.ChannelConnectivity.READY

    def unary_unary(self, *args: Any, **kwargs: Any) -> None:
        return None

    def unary_stream(self, *args: Any, **kwargs: Any) -> None:
        return None

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.state

    async def close(self, grace: float | None = None) -> None:
        self.closed = True


class Connector:
    def __init__(self) -> None:
        self.opened: list[FakeChannel] = []

    def __call__(self, address: str) -> Any:
        channel = FakeChannel(address)
        self.opened.append(channel)
        return channel


async def test_requests_to_one_worker_share_a_channel() -> None:
    connect = Connector()
    pool = WorkerChannels(4, connect=connect)

    first = await pool.acquire("w1:1")
    second = await pool.acquire("w1:1")

    assert first.stub is second.stub
    assert len(connect.opened) == 1
    await first.release()
    await second.release()
    await pool.close()
    assert connect.opened[0].closed


async def test_idle_channels_beyond_the_limit_are_closed_least_recent_first() -> None:
    connect = Connector()
    pool = WorkerChannels(2, connect=connect)
    for address in ("w1:1", "w2:1", "w1:1", "w3:1"):
        await (await pool.acquire(address)).release()

    assert len(pool) == 2
    closed = [channel.address for channel in connect.opened if channel.closed]
    assert closed == ["w2:1"]
    await pool.close()


async def test_a_busy_channel_is_not_closed_by_eviction() -> None:
    connect = Connector()
    pool = WorkerChannels(1, connect=connect)
    busy = await pool.acquire("w1:1")

    await (await pool.acquire("w2:1")).release()

    assert not connect.opened[0].closed
    assert len(pool) == 2  # over the limit only while every channel is busy
    await busy.release()
    await (await pool.acquire("w3:1")).release()
    assert len(pool) == 1
    await pool.close()


async def test_discarded_channel_closes_after_its_last_user() -> None:
    connect = Connector()
    pool = WorkerChannels(4, connect=connect)
    lease = await pool.acquire("w1:1")

    await pool.discard("w1:1")
    assert not connect.opened[0].closed
    fresh = await pool.acquire("w1:1")
    assert len(connect.opened) == 2

    await lease.release()
    await lease.release()  # idempotent
    assert connect.opened[0].closed
    assert not connect.opened[1].closed
    await fresh.release()
    await pool.close()


async def test_reachable_follows_the_channel_state() -> None:
    connect = Connector()
    pool = WorkerChannels(4, connect=connect)
    lease = await pool.acquire("w1:1")

    assert lease.reachable()
    connect.opened[0].state = grpc.ChannelConnectivity.TRANSIENT_FAILURE
    assert not lease.reachable()
    await lease.release()
    await pool.close()


async def test_close_closes_busy_and_retired_channels() -> None:
    connect = Connector()
    pool = WorkerChannels(4, connect=connect)
    await pool.acquire("w1:1")
    await pool.acquire("w2:1")
    await pool.discard("w2:1")

    await pool.close()

    assert all(channel.closed for channel in connect.opened)
