"""`python -m services.registry` as a real process: env wiring, health, graceful SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from modelrunner.v1 import registry_pb2, registry_pb2_grpc
from tests.support.processes import free_port, stop_process, wait_grpc_healthy_sync

REPO = Path(__file__).resolve().parents[3]


def test_serves_from_env_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "MODELS_PATH": str(tmp_path / "models"),
        "REGISTRY_LISTEN_ADDRESS": address,
        "REGISTRY_SHUTDOWN_GRACE": "1s",
        "PYTHONPATH": str(REPO),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.registry"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_grpc_healthy_sync(address, timeout=20)
        with grpc.insecure_channel(address) as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            reply = stub.ListModels(registry_pb2.ListModelsRequest(), timeout=5)
            assert list(reply.models) == []
            with pytest.raises(grpc.RpcError) as caught:
                stub.InspectModel(registry_pb2.InspectModelRequest(reference="x"), timeout=5)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert (tmp_path / "models" / "oci-layout").is_file()
        assert (tmp_path / "models" / "index.json").is_file()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        stop_process(process)


def test_bad_setting_exits_with_a_message(tmp_path: Path) -> None:
    env = {**os.environ, "REGISTRY_FETCH_CHUNK_BYTES": "lots", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "services.registry"],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert b"REGISTRY_FETCH_CHUNK_BYTES" in result.stderr
