"""Registry pull/push vs a plain HTTP GET of the same blob, side by side in one run.

Starts a real OCI registry (Debian `docker-registry`, CNCF distribution 2.8) on loopback with
temporary storage, and the project's registry service as a real process (`python -m
services.registry`). Packages the SmolLM2 GGUF and a generated ~1 GiB GGUF with Registry.Package,
pushes both with Registry.Push, then, for each model and round, pulls it with Registry.Pull into a
fresh, empty store (a new service process each time) and fetches the same layer blob with curl
from the registry's `/v2/<repo>/blobs/<digest>`, alternating them so machine noise hits all alike:
to /dev/null (the network alone), to a file (what the pull writes), to a file then fsync (as
durable as the pull, which fsyncs each blob before it becomes visible), and `curl | tee FILE |
sha256sum` (a plain GET that also writes and hashes: the fair baseline for a verified download;
its hash is checked against the digest). The local bound is hash + write + fsync of the same blob
read from the upstream's page-cached storage, with no network at all: the per-byte work the pull
does before it renames a blob. It is a rough bound: writing into the page cache varies several
fold between runs on a VM (fresh guest pages cost more), so a pull can beat one sample of it. The
service's RSS (VmRSS) is sampled every 50 ms during each push and pull; growth is the peak over
the idle RSS measured just before the transfer started.

With `--baseline-root DIR` (a copy of the repository at another revision) each round also pulls
with that tree's registry service, for a before/after comparison under the same noise.

    .venv/bin/python bench/registry_transfer.py [--gguf FILE] [--synthetic-mib 1024] [--rounds 3]
        [--baseline-root DIR]

MB is 10^6 bytes throughout, as in curl's %{speed_download}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

# `tests` is not an installed package; the docker-registry fixture lives there.
_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from modelrunner.v1 import common_pb2, registry_pb2, registry_pb2_grpc  # noqa: E402
from services.common.grpc_client import open_channel  # noqa: E402
from services.common.health_client import wait_until_serving  # noqa: E402
from tests.integration.registry.conftest import DockerRegistry, running_registry  # noqa: E402
from tests.support.processes import free_port  # noqa: E402

_MB = 1_000_000
_MIB = 1024 * 1024
_DEFAULT_GGUF = _REPO / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
_SAMPLE_INTERVAL = 0.05
_IDLE_SETTLE = 0.5
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_RPC_TIMEOUT = 600.0
_CURL_TIMEOUT = 600


@dataclass
class RssSampler:
    """Peak VmRSS/RssAnon of one process while a transfer runs, polled from /proc."""

    pid: int
    baseline_rss: int = 0
    baseline_anon: int = 0
    peak_rss: int = 0
    peak_anon: int = 0
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def _sample(self) -> None:
        rss, anon = _read_rss(self.pid)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_anon = max(self.peak_anon, anon)

    async def _poll(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(_SAMPLE_INTERVAL)

    async def __aenter__(self) -> RssSampler:
        self.baseline_rss, self.baseline_anon = _read_rss(self.pid)
        self.peak_rss, self.peak_anon = self.baseline_rss, self.baseline_anon
        self._task = asyncio.create_task(self._poll())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._sample()

    @property
    def growth_mb(self) -> float:
        return (self.peak_rss - self.baseline_rss) / _MB

    @property
    def anon_growth_mb(self) -> float:
        return (self.peak_anon - self.baseline_anon) / _MB


def _read_rss(pid: int) -> tuple[int, int]:
    """(VmRSS, RssAnon) in bytes."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["RssAnon"]


@dataclass(frozen=True)
class Service:
    pid: int
    stub: registry_pb2_grpc.RegistryAsyncStub


@contextlib.asynccontextmanager
async def registry_service(
    models_path: Path, log_path: Path, root: Path = _REPO
) -> AsyncIterator[Service]:
    """`python -m services.registry` of the tree at `root` on a free port; SIGTERM (then
    SIGKILL) by PID on exit."""
    address = f"127.0.0.1:{free_port()}"
    environ = {
        **os.environ,
        "MODELS_PATH": str(models_path),
        "REGISTRY_LISTEN_ADDRESS": address,
        "LOG_LEVEL": "WARNING",
    }
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.registry",
            env=environ,
            cwd=root,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:

        def gone() -> str | None:
            code = process.returncode
            return None if code is None else f"exited with {code}; see {log_path}"

        await wait_until_serving(address, timeout=_START_TIMEOUT, gone=gone)
        async with open_channel(address) as channel:
            yield Service(process.pid, registry_pb2_grpc.RegistryStub(channel))
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), _STOP_TIMEOUT)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _idle_baseline(service: Service) -> None:
    """Let start-up allocations settle so the sampler's baseline is the idle RSS."""
    await asyncio.sleep(_IDLE_SETTLE)
    await service.stub.ListModels(registry_pb2.ListModelsRequest(), timeout=10)


def write_synthetic_gguf(path: Path, tensor_bytes: int) -> None:
    """A valid GGUF with one I8 tensor of `tensor_bytes` non-repeating bytes, streamed to disk."""
    cols = 4096
    rows = tensor_bytes // cols
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_context_length(2048)
    writer.add_tensor_info("synthetic.weight", (rows, cols), np.dtype(np.int8), rows * cols)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    assert writer.fout is not None
    out = writer.fout[0]
    writer.write_padding(out, out.tell())
    block = bytearray(os.urandom(_MIB))
    remaining = rows * cols
    counter = 0
    while remaining:
        # A counter per block keeps blocks distinct without paying for 1 GiB of urandom.
        block[:8] = counter.to_bytes(8, "little")
        out.write(block[: min(remaining, _MIB)])
        remaining -= min(remaining, _MIB)
        counter += 1
    writer.close()


async def _transfer(call: object) -> common_pb2.Model:
    last: registry_pb2.TransferProgress | None = None
    async for message in call:  # type: ignore[attr-defined]
        last = message
    if last is None or last.type != registry_pb2.TRANSFER_EVENT_TYPE_SUCCESS:
        raise RuntimeError(f"transfer failed: {last}")
    return last.model


@dataclass
class Row:
    name: str
    tag: str
    layer_bytes: int = 0
    blob_digest: str = ""
    push_mbps: float = 0.0
    push_rss_mb: float = 0.0
    push_anon_mb: float = 0.0
    pull_mbps: list[float] = field(default_factory=list)
    baseline_pull_mbps: list[float] = field(default_factory=list)
    curl_mbps: list[float] = field(default_factory=list)
    curl_disk_mbps: list[float] = field(default_factory=list)
    # The same GET to a file, then fsync: a download that lands durably, as the pull's does.
    curl_durable_mbps: list[float] = field(default_factory=list)
    curl_verified_mbps: list[float] = field(default_factory=list)
    bound_mbps: list[float] = field(default_factory=list)
    pull_rss_mb: list[float] = field(default_factory=list)
    pull_anon_mb: list[float] = field(default_factory=list)


async def _push(service: Service, row: Row, upstream: DockerRegistry) -> None:
    await _idle_baseline(service)
    request = registry_pb2.PushRequest(reference=row.tag, target=f"{upstream.host}/{row.tag}")
    async with RssSampler(service.pid) as rss:
        start = time.perf_counter()
        await _transfer(service.stub.Push(request, timeout=_RPC_TIMEOUT))
        elapsed = time.perf_counter() - start
    row.push_mbps = row.layer_bytes / elapsed / _MB
    row.push_rss_mb, row.push_anon_mb = rss.growth_mb, rss.anon_growth_mb


async def _pull(service: Service, row: Row, upstream: DockerRegistry) -> tuple[float, RssSampler]:
    """MB/s of one Pull into the service's empty store, and its RSS samples."""
    await _idle_baseline(service)
    request = registry_pb2.PullRequest(reference=f"{upstream.host}/{row.tag}")
    async with RssSampler(service.pid) as rss:
        start = time.perf_counter()
        model = await _transfer(service.stub.Pull(request, timeout=_RPC_TIMEOUT))
        elapsed = time.perf_counter() - start
    if sum(layer.size for layer in model.layers) != row.layer_bytes:
        raise RuntimeError(f"pulled {row.tag} has other layers than the one pushed")
    return row.layer_bytes / elapsed / _MB, rss


async def _pull_round(
    row: Row, upstream: DockerRegistry, store: Path, logs: Path, root: Path
) -> tuple[float, RssSampler]:
    async with registry_service(store, logs, root) as service:
        result = await _pull(service, row, upstream)
    await asyncio.to_thread(shutil.rmtree, store)
    return result


async def _curl(row: Row, upstream: DockerRegistry, output: Path) -> float:
    """MB/s of one plain GET of the layer blob into `output` (/dev/null, or a file on disk)."""
    repository = row.tag.partition(":")[0]
    url = f"http://{upstream.host}/v2/{repository}/blobs/{row.blob_digest}"
    process = await asyncio.create_subprocess_exec(
        "curl",
        "-sf",
        "--max-time",
        str(_CURL_TIMEOUT),
        "-o",
        str(output),
        "-w",
        "%{speed_download}",
        url,
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"curl {url} failed with {process.returncode}")
    return float(stdout) / _MB


async def _curl_durable(row: Row, upstream: DockerRegistry, output: Path) -> float:
    """MB/s of a plain GET into `output` followed by its fsync, timed end to end."""
    start = time.perf_counter()
    await _curl(row, upstream, output)
    await asyncio.to_thread(_fsync_file, output)
    return row.layer_bytes / (time.perf_counter() - start) / _MB


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


async def _curl_verified(row: Row, upstream: DockerRegistry, output: Path) -> float:
    """MB/s of `curl URL | tee FILE | sha256sum`, timed end to end; the hash must match."""
    repository = row.tag.partition(":")[0]
    url = f"http://{upstream.host}/v2/{repository}/blobs/{row.blob_digest}"
    start = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-o",
        "pipefail",
        "-c",
        'curl -sf --max-time "$1" "$2" | tee "$3" | sha256sum',
        "curl-verified",
        str(_CURL_TIMEOUT),
        url,
        str(output),
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await process.communicate()
    elapsed = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"curl {url} | tee | sha256sum failed with {process.returncode}")
    if "sha256:" + stdout.split()[0].decode() != row.blob_digest:
        raise RuntimeError(f"curl {url} | sha256sum: not {row.blob_digest}")
    return row.layer_bytes / elapsed / _MB


def _hash_write_fsync(source: Path, output: Path, chunk_bytes: int = 4 * _MIB) -> float:
    """MB/s of hashing and writing `source` into `output`, then fsync: no network at all."""
    hasher = hashlib.sha256()
    buffer = bytearray(chunk_bytes)
    view = memoryview(buffer)
    start = time.perf_counter()
    with source.open("rb", buffering=0) as reader, output.open("wb", buffering=0) as writer:
        while count := reader.readinto(buffer):
            hasher.update(view[:count])
            writer.write(view[:count])
        os.fsync(writer.fileno())
    elapsed = time.perf_counter() - start
    return source.stat().st_size / elapsed / _MB


async def run(args: argparse.Namespace, tmp: Path) -> list[Row]:
    synthetic = tmp / "synthetic.gguf"
    await asyncio.to_thread(write_synthetic_gguf, synthetic, args.synthetic_mib * _MIB)
    rows = [
        (Row("SmolLM2 (98 MB)", "bench/smollm2:v1"), args.gguf.resolve()),
        (Row(f"synthetic ({args.synthetic_mib} MiB)", "bench/synthetic:v1"), synthetic),
    ]
    logs = tmp / "registry-service.log"
    with running_registry(tmp / "upstream") as upstream:
        source = tmp / "source-store"
        async with registry_service(source, logs) as service:
            for row, path in rows:
                reply = await service.stub.Package(
                    registry_pb2.PackageRequest(gguf_path=str(path), tag=row.tag),
                    timeout=_RPC_TIMEOUT,
                )
                row.layer_bytes = sum(layer.size for layer in reply.model.layers)
                row.blob_digest = reply.model.layers[0].digest
        await asyncio.to_thread(synthetic.unlink)
        for row, _ in rows:
            # A process of its own per push: the baseline is idle, not what Package left behind.
            async with registry_service(source, logs) as service:
                await _push(service, row, upstream)
            print(f"pushed {row.tag}: {row.push_mbps:.1f} MB/s", file=sys.stderr)
        await asyncio.to_thread(shutil.rmtree, source)
        for row, _ in rows:
            for round_number in range(args.rounds):
                store = tmp / f"pull-store-{round_number}"
                mbps, rss = await _pull_round(row, upstream, store, logs, _REPO)
                row.pull_mbps.append(mbps)
                row.pull_rss_mb.append(rss.growth_mb)
                row.pull_anon_mb.append(rss.anon_growth_mb)
                if args.baseline_root is not None:
                    mbps, _ = await _pull_round(row, upstream, store, logs, args.baseline_root)
                    row.baseline_pull_mbps.append(mbps)
                row.curl_mbps.append(await _curl(row, upstream, Path(os.devnull)))
                # The pull stores what it fetches; so does this GET (page cache, no fsync).
                on_disk = tmp / "curl-blob"
                row.curl_disk_mbps.append(await _curl(row, upstream, on_disk))
                await asyncio.to_thread(on_disk.unlink)
                row.curl_durable_mbps.append(await _curl_durable(row, upstream, on_disk))
                await asyncio.to_thread(on_disk.unlink)
                row.curl_verified_mbps.append(await _curl_verified(row, upstream, on_disk))
                await asyncio.to_thread(on_disk.unlink)
                source = upstream.blob_data(row.blob_digest)
                row.bound_mbps.append(await asyncio.to_thread(_hash_write_fsync, source, on_disk))
                await asyncio.to_thread(on_disk.unlink)
                baseline = (
                    f", baseline tree {row.baseline_pull_mbps[-1]:.1f}"
                    if row.baseline_pull_mbps
                    else ""
                )
                print(
                    f"{row.tag} round {round_number + 1}: pull {row.pull_mbps[-1]:.1f} MB/s"
                    f"{baseline}, curl {row.curl_mbps[-1]:.1f} (to file "
                    f"{row.curl_disk_mbps[-1]:.1f}, + fsync {row.curl_durable_mbps[-1]:.1f}, "
                    f"| tee | sha256sum "
                    f"{row.curl_verified_mbps[-1]:.1f}), hash+write+fsync "
                    f"{row.bound_mbps[-1]:.1f}, pull RSS +{row.pull_rss_mb[-1]:.1f} MB",
                    file=sys.stderr,
                )
    return [row for row, _ in rows]


def print_table(rows: list[Row], rounds: int) -> None:
    print(
        f"\nPull and the baselines: median of {rounds} alternating rounds; pull RSS growth: worst "
        "round; push: one round into an empty registry. MB = 10^6 bytes.\n"
    )
    baseline = any(row.baseline_pull_mbps for row in rows)
    print(
        "| object | pull MB/s | "
        + ("baseline tree pull MB/s | " if baseline else "")
        + "curl → /dev/null MB/s | ratio | curl → file MB/s | ratio | "
        "curl → file + fsync MB/s | ratio | "
        "curl \\| tee \\| sha256sum MB/s | ratio | hash+write+fsync MB/s | ratio | "
        "pull RSS growth (MB) | push MB/s | push RSS growth (MB) |"
    )
    print("|---|---:|" + ("---:|" if baseline else "") + "---:|" * 13)
    for row in rows:
        pull = statistics.median(row.pull_mbps)
        cells = [row.name, f"{pull:.1f}"]
        if baseline:
            cells.append(f"{statistics.median(row.baseline_pull_mbps):.1f}")
        for samples in (
            row.curl_mbps,
            row.curl_disk_mbps,
            row.curl_durable_mbps,
            row.curl_verified_mbps,
            row.bound_mbps,
        ):
            reference = statistics.median(samples)
            cells += [f"{reference:.1f}", f"{pull / reference:.2f}"]
        cells += [
            f"{max(row.pull_rss_mb):.1f} (anon {max(row.pull_anon_mb):.1f})",
            f"{row.push_mbps:.1f}",
            f"{row.push_rss_mb:.1f} (anon {row.push_anon_mb:.1f})",
        ]
        print("| " + " | ".join(cells) + " |")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--gguf", type=Path, default=_DEFAULT_GGUF)
    parser.add_argument("--synthetic-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3, help="alternating pull/curl rounds")
    parser.add_argument("--work-dir", type=Path, default=None, help="parent of the temp dir")
    parser.add_argument(
        "--baseline-root",
        type=Path,
        default=None,
        help="a copy of the repository whose registry service also pulls, each round",
    )
    parser.add_argument("--time-limit", type=float, default=900.0, help="seconds for the run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="registry-bench-", dir=args.work_dir) as tmp:
        async with asyncio.timeout(args.time_limit):
            rows = await run(args, Path(tmp))
    print_table(rows, args.rounds)


if __name__ == "__main__":
    asyncio.run(main())
