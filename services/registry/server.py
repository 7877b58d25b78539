"""The grpc.aio Registry servicer: proto <-> domain conversion and error -> status mapping only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, NoReturn, TypeVar

import grpc
import httpx

from modelrunner.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from services.registry.credentials import Credentials
from services.registry.errors import (
    Conflict,
    DigestMismatch,
    InvalidArgument,
    NotFound,
    OffsetOutOfRange,
    PermissionDenied,
    RegistryError,
    RegistryUnavailable,
    RemoteDigestMismatch,
    RemoteProtocolError,
    StoreCorrupt,
    Unauthenticated,
    UploadTooLarge,
)
from services.registry.model_store import Model, ModelStore
from services.registry.packaging import Packager, PackageSpec
from services.registry.progress import EventType, TransferEvent
from services.registry.pull import Puller
from services.registry.push import Pusher
from services.registry.remote_inspect import RemoteInspector
from services.registry.store.manifests import Descriptor
from services.registry.upload import Uploader, UploadHeader
from services.registry.verify import BlobStatus, StoreVerifier, VerifyReport

__all__ = [
    "SERVICE_NAME",
    "RegistryServicer",
    "descriptor_to_proto",
    "event_to_proto",
    "model_to_proto",
    "verify_report_to_proto",
]

SERVICE_NAME: str = registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
_Context = grpc.aio.ServicerContext[Any, Any]

# Most specific first: InvalidModelFile is an InvalidArgument, ModelNotFound a NotFound.
_STATUS: tuple[tuple[type[RegistryError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (OffsetOutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (UploadTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (RegistryUnavailable, grpc.StatusCode.UNAVAILABLE),
    (RemoteProtocolError, grpc.StatusCode.UNAVAILABLE),
    (RemoteDigestMismatch, grpc.StatusCode.DATA_LOSS),
    (DigestMismatch, grpc.StatusCode.ABORTED),
    (StoreCorrupt, grpc.StatusCode.INTERNAL),
)


def _status_for(error: RegistryError) -> grpc.StatusCode:
    for kind, code in _STATUS:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


async def _abort(context: _Context, error: RegistryError) -> NoReturn:
    code = _status_for(error)
    if code == grpc.StatusCode.INTERNAL:
        _log.error("registry store error: %s", error)
    await context.abort(code, str(error))


async def _call(context: _Context, work: Awaitable[_T]) -> _T:
    try:
        return await work
    except RegistryError as error:
        await _abort(context, error)


def descriptor_to_proto(descriptor: Descriptor) -> common_pb2.Descriptor:
    return common_pb2.Descriptor(
        media_type=descriptor.media_type,
        digest=descriptor.digest,
        size=descriptor.size,
        annotations=dict(descriptor.annotations),
    )


def model_to_proto(model: Model) -> common_pb2.Model:
    config = model.config
    return common_pb2.Model(
        id=model.id,
        tags=list(model.tags),
        created=model.created,
        config=common_pb2.ModelConfig(
            format=config.format,
            quantization=config.quantization,
            parameters=config.parameters,
            architecture=config.architecture,
            size=config.size,
            gguf=dict(config.gguf),
            context_size=config.context_size,
        ),
        config_descriptor=descriptor_to_proto(model.config_descriptor),
        layers=[descriptor_to_proto(layer) for layer in model.layers],
    )


_EVENT_TYPES = {
    EventType.PROGRESS: registry_pb2.TRANSFER_EVENT_TYPE_PROGRESS,
    EventType.SUCCESS: registry_pb2.TRANSFER_EVENT_TYPE_SUCCESS,
    EventType.WARNING: registry_pb2.TRANSFER_EVENT_TYPE_WARNING,
    EventType.ERROR: registry_pb2.TRANSFER_EVENT_TYPE_ERROR,
}


def event_to_proto(event: TransferEvent) -> registry_pb2.TransferProgress:
    message = registry_pb2.TransferProgress(
        type=_EVENT_TYPES[event.type],
        message=event.message,
        total=event.total,
        mode=event.mode,
        error_code=event.error_code,
    )
    if event.layer is not None:
        message.layer.CopyFrom(
            registry_pb2.LayerProgress(
                id=event.layer.id, size=event.layer.size, current=event.layer.current
            )
        )
    if event.model is not None:
        message.model.CopyFrom(model_to_proto(event.model))
    return message


_BLOB_STATUS = {
    BlobStatus.OK: registry_pb2.BLOB_STATUS_OK,
    BlobStatus.CORRUPT: registry_pb2.BLOB_STATUS_CORRUPT,
    BlobStatus.MISSING: registry_pb2.BLOB_STATUS_MISSING,
}


def verify_report_to_proto(report: VerifyReport) -> registry_pb2.VerifyResponse:
    return registry_pb2.VerifyResponse(
        blobs=[
            registry_pb2.BlobVerification(
                digest=blob.digest,
                size=blob.size,
                status=_BLOB_STATUS[blob.status],
                models=list(blob.models),
                detail=blob.detail,
            )
            for blob in report.blobs
        ],
        models=report.models,
        ok=report.count(BlobStatus.OK),
        corrupt=report.count(BlobStatus.CORRUPT),
        missing=report.count(BlobStatus.MISSING),
        bytes_checked=report.bytes_checked,
    )


def _credentials(message: registry_pb2.RegistryCredentials) -> Credentials:
    return Credentials(
        bearer_token=message.bearer_token, username=message.username, password=message.password
    )


async def _transfer(
    context: _Context, events: AsyncIterator[TransferEvent], mode: str
) -> AsyncIterator[registry_pb2.TransferProgress]:
    """Errors before the first event abort with a status; later ones end with an ERROR event."""
    started = False
    try:
        async for event in events:
            started = True
            yield event_to_proto(event)
    except RegistryError as error:
        if not started:
            await _abort(context, error)
        code = _status_for(error)
        _log.warning("%s failed midway: %s", mode, error)
        yield event_to_proto(TransferEvent(EventType.ERROR, str(error), mode, error_code=code.name))
    except (OSError, httpx.HTTPError) as error:
        # A full disk or an unexpected transport failure: still a DMR error line, not a reset.
        if not started:
            raise
        _log.exception("%s failed midway", mode)
        yield event_to_proto(
            TransferEvent(
                EventType.ERROR,
                f"{type(error).__name__}: {error}",
                mode,
                error_code=grpc.StatusCode.INTERNAL.name,
            )
        )


async def _gguf_chunks(
    messages: AsyncIterator[registry_pb2.PackageUploadRequest],
) -> AsyncIterator[bytes]:
    async for message in messages:
        part = message.WhichOneof("part")
        if part == "end":
            return
        if part != "gguf_chunk":
            raise InvalidArgument("only GGUF chunks and the end marker may follow the header")
        yield message.gguf_chunk
    # grpc.aio ends the request stream quietly when the client cancels: without the marker the
    # upload may be cut short.
    raise InvalidArgument("upload incomplete: the stream ended before its end marker")


async def _drain(
    messages: AsyncIterator[registry_pb2.PackageUploadRequest], timeout: float
) -> None:
    """Read and drop what the client still sends, until it half-closes or `timeout` passes."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            async for _ in messages:
                pass


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    def __init__(
        self,
        store: ModelStore,
        packager: Packager,
        *,
        puller: Puller,
        pusher: Pusher,
        inspector: RemoteInspector,
        uploader: Uploader,
        fetch_chunk_bytes: int,
        upload_drain_timeout: float = 30.0,
        verifier: StoreVerifier | None = None,
    ) -> None:
        self._store = store
        self._upload_drain_timeout = upload_drain_timeout
        self._verifier = verifier or StoreVerifier(store, io_chunk_bytes=fetch_chunk_bytes)
        self._packager = packager
        self._uploader = uploader
        self._puller = puller
        self._pusher = pusher
        self._inspector = inspector
        self._fetch_chunk_bytes = fetch_chunk_bytes

    async def Pull(
        self, request: registry_pb2.PullRequest, context: _Context
    ) -> AsyncIterator[registry_pb2.TransferProgress]:
        events = self._puller.pull(request.reference, _credentials(request.credentials))
        async for message in _transfer(context, events, "pull"):
            yield message

    async def Push(
        self, request: registry_pb2.PushRequest, context: _Context
    ) -> AsyncIterator[registry_pb2.TransferProgress]:
        events = self._pusher.push(
            request.reference, request.target, _credentials(request.credentials)
        )
        async for message in _transfer(context, events, "push"):
            yield message

    async def Package(
        self, request: registry_pb2.PackageRequest, context: _Context
    ) -> registry_pb2.PackageResponse:
        spec = PackageSpec(
            gguf_path=request.gguf_path,
            tag=request.tag,
            context_size=request.context_size,
            license_path=request.license_path,
            chat_template_path=request.chat_template_path,
        )
        model = await _call(context, self._packager.package(spec))
        return registry_pb2.PackageResponse(model=model_to_proto(model))

    async def PackageUpload(
        self,
        request_iterator: AsyncIterator[registry_pb2.PackageUploadRequest],
        context: _Context,
    ) -> registry_pb2.PackageResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            await _abort(context, InvalidArgument("the first message must carry the header"))
        header = first.header
        upload = UploadHeader(
            tag=header.tag,
            context_size=header.context_size,
            gguf_name=header.gguf_name,
            gguf_size=header.gguf_size,
            license=header.license,
            chat_template=header.chat_template,
        )
        try:
            model = await self._uploader.receive(upload, _gguf_chunks(request_iterator))
        except RegistryError as error:
            # A status sent while the client still writes reaches it as INTERNAL "Internal error
            # from Core" instead of this error (grpc/grpc#36066): read the rest of the upload
            # first (dropping it), as an HTTP server reads a body it refuses.
            await _drain(request_iterator, self._upload_drain_timeout)
            await _abort(context, error)
        return registry_pb2.PackageResponse(model=model_to_proto(model))

    async def Purge(
        self, request: registry_pb2.PurgeRequest, context: _Context
    ) -> registry_pb2.PurgeResponse:
        result = await _call(context, self._store.purge())
        return registry_pb2.PurgeResponse(
            deleted_models=result.deleted_models, deleted_blobs=result.deleted_blobs
        )

    async def DiskUsage(
        self, request: registry_pb2.DiskUsageRequest, context: _Context
    ) -> registry_pb2.DiskUsageResponse:
        blobs, incomplete = await _call(context, self._store.blobs.disk_usage())
        return registry_pb2.DiskUsageResponse(blobs_bytes=blobs, incomplete_bytes=incomplete)

    async def Verify(
        self, request: registry_pb2.VerifyRequest, context: _Context
    ) -> registry_pb2.VerifyResponse:
        return verify_report_to_proto(await _call(context, self._verifier.verify()))

    async def ListModels(
        self, request: registry_pb2.ListModelsRequest, context: _Context
    ) -> registry_pb2.ListModelsResponse:
        models = await _call(context, self._store.list_models())
        return registry_pb2.ListModelsResponse(models=[model_to_proto(m) for m in models])

    async def InspectModel(
        self, request: registry_pb2.InspectModelRequest, context: _Context
    ) -> common_pb2.Model:
        return model_to_proto(await _call(context, self._store.inspect(request.reference)))

    async def InspectRemote(
        self, request: registry_pb2.InspectRemoteRequest, context: _Context
    ) -> common_pb2.Model:
        work = self._inspector.inspect(request.reference, _credentials(request.credentials))
        return model_to_proto(await _call(context, work))

    async def TagModel(
        self, request: registry_pb2.TagModelRequest, context: _Context
    ) -> registry_pb2.TagModelResponse:
        target, model = await _call(context, self._store.tag(request.source, request.target))
        return registry_pb2.TagModelResponse(target=target, model_id=model.id)

    async def DeleteModel(
        self, request: registry_pb2.DeleteModelRequest, context: _Context
    ) -> registry_pb2.DeleteModelResponse:
        result = await _call(context, self._store.delete(request.reference, force=request.force))
        return registry_pb2.DeleteModelResponse(
            untagged=list(result.untagged), deleted=list(result.deleted)
        )

    async def FetchBlob(
        self, request: registry_pb2.FetchBlobRequest, context: _Context
    ) -> AsyncIterator[registry_pb2.BlobChunk]:
        try:
            async with self._store.blobs.open(request.digest, request.offset) as reader:
                first = True
                async for data in reader.chunks(self._fetch_chunk_bytes):
                    yield registry_pb2.BlobChunk(data=data, total_size=reader.size if first else 0)
                    first = False
                if first:
                    # Nothing left past `offset`: one empty message still tells the size.
                    yield registry_pb2.BlobChunk(total_size=reader.size)
        except RegistryError as error:
            await _abort(context, error)
