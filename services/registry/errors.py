"""Errors raised by the registry service.

Every error the store and packaging raise derives from RegistryError; server.py maps each branch to
one gRPC status, so the tree below is also the contract clients see:

    RegistryError
    ├── InvalidArgument           INVALID_ARGUMENT: malformed reference, digest or request
    │   └── InvalidModelFile      the file to package is not a readable GGUF (or text) file
    ├── NotFound                  NOT_FOUND
    │   ├── ModelNotFound         no model matches the reference or id
    │   ├── BlobNotFound          no blob with that digest in the store
    │   ├── SourceFileNotFound    the path given to Package does not exist
    │   └── RemoteNotFound        the upstream registry has no such repository/manifest/blob
    ├── Conflict                  FAILED_PRECONDITION: delete of a multi-tag model without force,
    │   │                         purge of a directory that is not a model store
    │   └── UnsupportedMediaType  the upstream artifact is not a model we read (names the type)
    ├── Unauthenticated           UNAUTHENTICATED: the upstream registry refused the credentials
    ├── RegistryUnavailable       UNAVAILABLE: upstream unreachable, 5xx/429 after the retries
    ├── RemoteProtocolError       UNAVAILABLE: upstream answered something the protocol forbids
    ├── OffsetOutOfRange          OUT_OF_RANGE: FetchBlob offset beyond the blob's size
    ├── PermissionDenied          PERMISSION_DENIED: Package path outside the allowed directories
    ├── UploadTooLarge            RESOURCE_EXHAUSTED: PackageUpload beyond REGISTRY_MAX_UPLOAD_BYTES
    ├── DigestMismatch            ABORTED: content changed while it was written (retry)
    │   └── RemoteDigestMismatch  DATA_LOSS: upstream served bytes that do not match the digest
    └── StoreCorrupt              INTERNAL: the on-disk layout is unreadable or inconsistent
"""

from __future__ import annotations

__all__ = [
    "BlobNotFound",
    "Conflict",
    "DigestMismatch",
    "InvalidArgument",
    "InvalidModelFile",
    "ModelNotFound",
    "NotFound",
    "OffsetOutOfRange",
    "PermissionDenied",
    "RegistryError",
    "RegistryUnavailable",
    "RemoteDigestMismatch",
    "RemoteNotFound",
    "RemoteProtocolError",
    "SourceFileNotFound",
    "StoreCorrupt",
    "Unauthenticated",
    "UnsupportedMediaType",
    "UploadTooLarge",
]


class RegistryError(Exception):
    """Base of every error the registry raises on purpose."""


class InvalidArgument(RegistryError):
    """The request is malformed; retrying it unchanged cannot succeed."""


class InvalidModelFile(InvalidArgument):
    """The file to package is missing its GGUF header, a directory, unreadable or not text."""


class NotFound(RegistryError):
    """The named thing does not exist."""


class ModelNotFound(NotFound):
    def __init__(self, reference: str) -> None:
        super().__init__(f"model {reference!r} not found")
        self.reference = reference


class BlobNotFound(NotFound):
    def __init__(self, digest: str) -> None:
        super().__init__(f"blob {digest} not found")
        self.digest = digest


class SourceFileNotFound(NotFound):
    """A path given to Package does not exist on the registry's host."""


class Conflict(RegistryError):
    """The operation conflicts with the model's state (DMR's ErrConflict)."""


class OffsetOutOfRange(RegistryError):
    def __init__(self, digest: str, offset: int, size: int) -> None:
        super().__init__(f"offset {offset} is beyond the end of blob {digest} ({size} bytes)")


class PermissionDenied(RegistryError):
    """A Package path lies outside REGISTRY_PACKAGE_ALLOWED_DIRS."""


class UploadTooLarge(RegistryError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"upload is larger than the {limit}-byte limit (REGISTRY_MAX_UPLOAD_BYTES)"
        )
        self.limit = limit


class DigestMismatch(RegistryError):
    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"blob digest mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class StoreCorrupt(RegistryError):
    """index.json, oci-layout or a manifest cannot be parsed, or a referenced blob is missing."""


class RemoteNotFound(NotFound):
    """The upstream registry answered 404 (MANIFEST_UNKNOWN, NAME_UNKNOWN, BLOB_UNKNOWN)."""


class UnsupportedMediaType(Conflict):
    """DMR's ErrUnsupportedMediaType: the artifact's config or manifest type is not one we read."""


class Unauthenticated(RegistryError):
    """The upstream registry answered 401/403 to the credentials we had (or to none)."""


class RegistryUnavailable(RegistryError):
    """The upstream registry could not be reached, or kept failing after the bounded retries."""


class RemoteProtocolError(RegistryError):
    """The upstream registry answered in a way the distribution spec does not allow."""


class RemoteDigestMismatch(DigestMismatch):
    """A downloaded blob or manifest does not hash to its digest; nothing was stored."""
