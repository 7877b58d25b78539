"""The registry's transfers and packaging as Prometheus metrics (`modelrunner_registry_*`).

    modelrunner_registry_pull_bytes_total                 layer bytes received from upstream
                                                          registries (see DownloadMeter)
    modelrunner_registry_push_bytes_total                 blob bytes sent to upstream registries
    modelrunner_registry_pulls_total{outcome}             pulls: success, failure
    modelrunner_registry_pushes_total{outcome}            pushes: success, failure
    modelrunner_registry_pull_duration_seconds            successful pulls, first byte to stored
    modelrunner_registry_push_duration_seconds            successful pushes
    modelrunner_registry_transfer_failures_total{operation,reason}
                                                          failed pulls and pushes, by reason
    modelrunner_registry_packages_total{source,outcome}   Package (source=path) and PackageUpload
                                                          (source=upload): success, failure
    modelrunner_registry_upload_bytes_total               GGUF bytes received by PackageUpload

The store's size is read when Prometheus scrapes (store_stats.py). Labels are fixed sets: never
references, digests or request ids.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator

import httpx
from prometheus_client import CollectorRegistry, Counter, Histogram

from services.common.clock import Clock
from services.common.metrics import DURATION_BUCKETS
from services.registry.errors import (
    Conflict,
    DigestMismatch,
    InvalidArgument,
    NotFound,
    OffsetOutOfRange,
    PermissionDenied,
    RegistryUnavailable,
    RemoteProtocolError,
    StoreCorrupt,
    Unauthenticated,
    UnsupportedMediaType,
    UploadTooLarge,
)
from services.registry.progress import TransferEvent

__all__ = [
    "FAILURE_REASONS",
    "DownloadMeter",
    "RegistryMetrics",
    "failure_reason",
]

_PREFIX = "modelrunner_registry_"
_OPERATIONS = ("pull", "push")
_OUTCOMES = ("success", "failure")
_SOURCES = ("path", "upload")

# Most specific first: UnsupportedMediaType is a Conflict, RemoteDigestMismatch a DigestMismatch.
_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (UnsupportedMediaType, "unsupported_media_type"),
    (InvalidArgument, "invalid_argument"),
    (NotFound, "not_found"),
    (Conflict, "conflict"),
    (Unauthenticated, "unauthenticated"),
    (PermissionDenied, "permission_denied"),
    (RegistryUnavailable, "unavailable"),
    (RemoteProtocolError, "protocol_error"),
    (DigestMismatch, "digest_mismatch"),
    (UploadTooLarge, "too_large"),
    (OffsetOutOfRange, "offset_out_of_range"),
    (StoreCorrupt, "store_corrupt"),
    (OSError, "io_error"),
    (httpx.HTTPError, "transport_error"),
)
FAILURE_REASONS = (*(name for _, name in _REASONS), "cancelled", "internal")


def failure_reason(error: BaseException) -> str:
    """The `reason` label of a transfer that ended with `error`."""
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return "cancelled"
    for kind, name in _REASONS:
        if isinstance(error, kind):
            return name
    return "internal"


class DownloadMeter:
    """Counts the bytes a pull receives, from the per-layer progress its downloads report.

    Concurrent pulls of one blob share one download, which reports the same byte counts to each
    of them: only counts above the highest seen for the blob add bytes. A blob's first report is
    where the download starts (a resumed one: the bytes already on disk, received before) and a
    report below the last one (a retry that starts over) is a new start; neither adds bytes.
    """

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        # Per digest: (highest count reported, pulls watching it); bounded by downloads running.
        self._blobs: dict[str, tuple[int, int]] = {}

    @contextlib.contextmanager
    def watching(self, digest: str) -> Iterator[None]:
        """Around one pull's wait for the blob; the blob is forgotten when nobody watches it."""
        current, watchers = self._blobs.get(digest, (-1, 0))
        self._blobs[digest] = (current, watchers + 1)
        try:
            yield
        finally:
            current, watchers = self._blobs[digest]
            if watchers <= 1:
                del self._blobs[digest]
            else:
                self._blobs[digest] = (current, watchers - 1)

    def report(self, digest: str, done: int) -> None:
        last, watchers = self._blobs.get(digest, (-1, 0))
        if last >= 0 and done > last:
            self._counter.inc(done - last)
        if done != last:
            self._blobs[digest] = (done, watchers)


class RegistryMetrics:
    """Counters and histograms, registered on `registry` (a private one when None)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._bytes = {
            operation: Counter(
                f"{_PREFIX}{operation}_bytes",
                f"Bytes {'received from' if operation == 'pull' else 'sent to'} upstream "
                "registries.",
                registry=r,
            )
            for operation in _OPERATIONS
        }
        self._done = {
            operation: Counter(
                _PREFIX + plural, f"{plural.title()}, by outcome.", ["outcome"], registry=r
            )
            for operation, plural in (("pull", "pulls"), ("push", "pushes"))
        }
        self._seconds = {
            operation: Histogram(
                f"{_PREFIX}{operation}_duration_seconds",
                f"Time a successful {operation} took.",
                buckets=DURATION_BUCKETS,
                registry=r,
            )
            for operation in _OPERATIONS
        }
        for operation in _OPERATIONS:
            for outcome in _OUTCOMES:
                self._done[operation].labels(outcome)
        self._failures = Counter(
            _PREFIX + "transfer_failures",
            "Failed pulls and pushes, by operation and reason.",
            ["operation", "reason"],
            registry=r,
        )
        self._packages = Counter(
            _PREFIX + "packages",
            "Models packaged, by source (path: Package, upload: PackageUpload) and outcome.",
            ["source", "outcome"],
            registry=r,
        )
        for source in _SOURCES:
            for outcome in _OUTCOMES:
                self._packages.labels(source, outcome)
        self._upload_bytes = Counter(
            _PREFIX + "upload_bytes", "GGUF bytes received by PackageUpload.", registry=r
        )
        self.downloads = DownloadMeter(self._bytes["pull"])

    def pushed(self, count: int) -> None:
        self._bytes["push"].inc(count)

    def uploaded(self, count: int) -> None:
        self._upload_bytes.inc(count)

    async def metered(
        self, operation: str, events: AsyncGenerator[TransferEvent, None], clock: Clock
    ) -> AsyncIterator[TransferEvent]:
        """`events` (a pull or push), counted by outcome and timed when it succeeds. A reader
        that stops early (a client that went away) makes it a failure, reason `cancelled`."""
        started = clock.monotonic()
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    yield event
        except BaseException as exc:
            self._done[operation].labels("failure").inc()
            self._failures.labels(operation, failure_reason(exc)).inc()
            raise
        self._done[operation].labels("success").inc()
        self._seconds[operation].observe(clock.monotonic() - started)

    @contextlib.contextmanager
    def packaging(self, source: str) -> Iterator[None]:
        """Count the packaging done inside the block by its outcome."""
        try:
            yield
        except BaseException:
            self._packages.labels(source, "failure").inc()
            raise
        self._packages.labels(source, "success").inc()
