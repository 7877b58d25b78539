"""`python -m services.worker` as a real process: registers, serves, and leaves no runner behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from modelrunner.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from services.common.grpc_client import open_channel
from services.common.health_client import wait_until_serving
from services.worker.server import SERVICE_NAME
from tests.support.processes import child_pids, free_port, is_alive, stop_process
from tests.unit.worker.fake_registry import FakeRegistry, running_registry
from tests.unit.worker.fake_scheduler import FakeScheduler, serve_scheduler
from tests.unit.worker.support import FakeBlobs, eventually

ROOT = Path(__file__).resolve().parents[3]


async def test_worker_process_registers_serves_and_stops_its_runners(
    fake_binary: Path, runtime_dir: Path, tmp_path: Path, blobs: FakeBlobs
) -> None:
    spec = blobs.model(b"GGUF fake model\n")
    layer = spec.layers[0]
    registry = FakeRegistry(blobs={layer.digest: blobs.paths[layer.digest].read_bytes()})
    scheduler = FakeScheduler(heartbeat_interval_ms=60_000)
    scheduler_server, scheduler_address = await serve_scheduler(scheduler)
    address = f"127.0.0.1:{free_port()}"
    serving_registry = running_registry(registry)
    log_path = tmp_path / "worker.log"
    async with serving_registry:
        env = {
            **os.environ,
            "WORKER_LISTEN_ADDRESS": address,
            "WORKER_ID": "w-main",
            "WORKER_TAGS": "zone=a",
            "SCHEDULER_ADDRESS": scheduler_address,
            "REGISTRY_ADDRESS": serving_registry.address,
            "WORKER_CACHE_PATH": str(tmp_path / "cache"),
            "WORKER_RUNTIME_DIR": str(runtime_dir),
            "LLAMA_SERVER_PATH": str(fake_binary),
            "WORKER_SHUTDOWN_GRACE": "1s",
            "LOG_LEVEL": "DEBUG",
        }
        process = _start_worker(env, log_path)
        try:
            await wait_until_serving(
                address,
                timeout=30,
                service=SERVICE_NAME,
                gone=lambda: None if process.poll() is None else f"exited {process.returncode}",
            )
            await eventually(lambda: bool(scheduler.registers), what="registration")
            info = scheduler.registers[0].worker
            assert (info.worker_id, info.address) == ("w-main", address)
            assert info.tags["zone"] == "a" and info.tags["accelerator"] in (
                "cpu",
                "nvidia",
                "rocm",
            )
            assert info.memory_total_bytes > 0

            async with open_channel(address) as channel:
                stub = worker_pb2_grpc.WorkerStub(channel)
                model = common_pb2.Model(
                    id=spec.model_id,
                    layers=[
                        common_pb2.Descriptor(
                            media_type=layer.media_type, digest=layer.digest, size=layer.size
                        )
                    ],
                )
                loaded = await stub.Load(worker_pb2.LoadRequest(model=model), timeout=20)
                assert loaded.runner.state == common_pb2.RUNNER_STATE_READY
            # The load is reported at once, not at the next (minute-long) heartbeat tick.
            await eventually(lambda: bool(scheduler.heartbeats), what="a heartbeat", timeout=5)
            [runner_pid] = child_pids(process.pid)

            process.send_signal(signal.SIGTERM)
            returncode = await asyncio.to_thread(process.wait, 20)
            assert returncode == 0, _tail(log_path)
            assert not is_alive(runner_pid)
            farewell = scheduler.heartbeats[-1].runners
            assert [r.state for r in farewell] == [common_pb2.RUNNER_STATE_STOPPED]
        finally:
            stop_process(process)
            await scheduler_server.stop(None)


def _start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    return _start_module("services.worker", [], env, log_path)


def _start_module(
    module: str, args: list[str], env: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


async def test_simulated_worker_process_needs_no_llama_server_and_no_registry(
    tmp_path: Path,
) -> None:
    scheduler = FakeScheduler(heartbeat_interval_ms=60_000)
    scheduler_server, scheduler_address = await serve_scheduler(scheduler)
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "WORKER_ENGINE": "simulated",
        "WORKER_SIM_LOAD_TIME": "0",
        "WORKER_LISTEN_ADDRESS": address,
        "WORKER_ID": "w-sim",
        "SCHEDULER_ADDRESS": scheduler_address,
        "REGISTRY_ADDRESS": f"127.0.0.1:{free_port()}",  # nobody there
        "LLAMA_SERVER_PATH": "/nonexistent/llama-server",
        "WORKER_SHUTDOWN_GRACE": "1s",
    }
    log_path = tmp_path / "worker.log"
    process = _start_worker(env, log_path)
    try:
        await wait_until_serving(address, timeout=30, service=SERVICE_NAME)
        await eventually(lambda: bool(scheduler.registers), what="registration")
        info = scheduler.registers[0].worker
        assert (info.worker_id, info.memory_total_bytes) == ("w-sim", 16 * 1024**3)
        assert info.tags["accelerator"] == "cpu"
        model = common_pb2.Model(
            id="sha256:" + "e" * 64,
            layers=[
                common_pb2.Descriptor(
                    media_type="application/vnd.docker.ai.gguf.v3",
                    digest="sha256:" + "f" * 64,
                    size=1000,
                )
            ],
        )
        async with open_channel(address) as channel:
            loaded = await worker_pb2_grpc.WorkerStub(channel).Load(
                worker_pb2.LoadRequest(model=model), timeout=10
            )
        assert (loaded.runner.state, loaded.runner.parallel) == (common_pb2.RUNNER_STATE_READY, 4)
        assert child_pids(process.pid) == set()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 20) == 0, _tail(log_path)
    finally:
        stop_process(process)
        await scheduler_server.stop(None)


async def test_fleet_cli_runs_until_sigterm(tmp_path: Path) -> None:
    scheduler = FakeScheduler(heartbeat_interval_ms=100)
    scheduler_server, scheduler_address = await serve_scheduler(scheduler)
    log_path = tmp_path / "fleet.log"
    process = _start_module(
        "services.worker.fleet",
        [
            "--count",
            "3",
            "--memory",
            "2GiB",
            "--tags",
            "accelerator=gpu,zone=z",
            "--id-prefix",
            "cli",
        ],
        {**os.environ, "SCHEDULER_ADDRESS": scheduler_address},
        log_path,
    )
    try:
        await eventually(
            lambda: len(scheduler.registers) == 3, what="three registrations", timeout=30
        )
        infos = sorted((r.worker for r in scheduler.registers), key=lambda w: w.worker_id)
        assert [w.worker_id for w in infos] == ["cli-000", "cli-001", "cli-002"]
        assert all(w.memory_total_bytes == 2 * 1024**3 for w in infos)
        assert all(dict(w.tags) == {"accelerator": "gpu", "zone": "z"} for w in infos)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 20) == 0, _tail(log_path)
    finally:
        stop_process(process)
        await scheduler_server.stop(None)
