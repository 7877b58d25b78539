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
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "services.worker"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]
