from __future__ import annotations

from pathlib import Path

import pytest

from services.common.digest import (
    InvalidDigest,
    blob_path,
    parse_digest,
    sha256_digest,
    sha256_file,
)


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:../../etc/passwd",
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63,
        "sha512:" + "a" * 64,
        "md5:" + "a" * 32,
        "sha256:" + "a" * 64 + "/x",
        "",
    ],
)
def test_rejects_bad_digests_before_building_paths(digest: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidDigest):
        blob_path(tmp_path, digest)


def test_blob_path_and_hashing(tmp_path: Path) -> None:
    data = b"hello"
    digest = sha256_digest(data)
    assert parse_digest(digest)[0] == "sha256"
    path = blob_path(tmp_path, digest)
    assert path == tmp_path / "blobs" / "sha256" / digest.removeprefix("sha256:")
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    assert sha256_file(path) == digest
