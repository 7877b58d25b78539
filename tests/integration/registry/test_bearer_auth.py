"""The Bearer-token flow against a real docker-registry that trusts a token endpoint: the
challenge, the token request (with Basic credentials or anonymous), the retried request, and a
token supplied by the caller (DMR's `bearer-token`), for manifests and blobs alike."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from modelrunner.v1 import registry_pb2

from .conftest import (
    PASSWORD,
    USER,
    Service,
    pull_model,
    push_model,
    registry_service,
    success_model,
)
from .token_auth import SERVICE, TokenRegistry, TokenServer, token_registry


@pytest.fixture(scope="module")
def token_auth(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TokenRegistry, TokenServer]]:
    with token_registry(tmp_path_factory.mktemp("token-registry")) as pair:
        yield pair


async def test_push_and_pull_earn_tokens_with_credentials(
    source: Service, token_auth: tuple[TokenRegistry, TokenServer], tmp_path: Path
) -> None:
    registry, tokens = token_auth
    target = f"{registry.host}/team/smollm2:v1"
    before = len(tokens.requests)
    pushed = success_model(
        await push_model(source, "ai/smollm2:v1", target, username=USER, password=PASSWORD)
    )
    asked = tokens.requests[before:]
    assert asked, "the push never asked the token endpoint"
    assert all(request["service"] == SERVICE and request["user"] == USER for request in asked)
    assert any(
        set(request["scope"].rpartition(":")[2].split(",")) == {"pull", "push"}
        and request["scope"].startswith("repository:team/smollm2:")
        for request in asked
    ), asked

    async with registry_service(tmp_path / "models") as empty:
        pulled = success_model(await pull_model(empty, target, username=USER, password=PASSWORD))
    assert pulled.id == pushed.id
    assert [layer.digest for layer in pulled.layers] == [layer.digest for layer in pushed.layers]


async def test_missing_or_wrong_credentials_are_unauthenticated(
    source: Service, token_auth: tuple[TokenRegistry, TokenServer], tmp_path: Path
) -> None:
    registry, tokens = token_auth
    target = f"{registry.host}/team/private:v1"
    for credentials in ({}, {"username": USER, "password": "wrong"}):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await push_model(source, "ai/smollm2:v1", target, **credentials)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED, credentials
    success_model(
        await push_model(source, "ai/smollm2:v1", target, username=USER, password=PASSWORD)
    )
    async with registry_service(tmp_path / "models") as empty:
        for credentials in ({}, {"username": USER, "password": "wrong"}):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await pull_model(empty, target, **credentials)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED, credentials
            # Anonymous: the registry refused the token's empty access; wrong password: the
            # token endpoint refused. Either way the message says who refused.
            where = registry.host if not credentials else tokens.realm
            assert where in (error.value.details() or ""), error.value.details()
        listed = await empty.stub.ListModels(registry_pb2.ListModelsRequest())
        assert not listed.models, "a refused pull left a model behind"


async def test_anonymous_pull_of_a_public_repository(
    source: Service, token_auth: tuple[TokenRegistry, TokenServer], tmp_path: Path
) -> None:
    """Docker Hub's shape: no credentials, yet a token (granting pull only) is fetched."""
    registry, tokens = token_auth
    target = f"{registry.host}/public/smollm2:v1"
    success_model(
        await push_model(source, "ai/smollm2:v1", target, username=USER, password=PASSWORD)
    )
    before = len(tokens.requests)
    async with registry_service(tmp_path / "models") as empty:
        model = success_model(await pull_model(empty, target))
    assert model.tags == [target]
    assert [request["user"] for request in tokens.requests[before:]] == [""] * len(
        tokens.requests[before:]
    )
    assert tokens.requests[before:], "the anonymous pull never asked for a token"


async def test_bearer_token_supplied_by_the_caller(
    source: Service, token_auth: tuple[TokenRegistry, TokenServer], tmp_path: Path
) -> None:
    registry, tokens = token_auth
    target = f"{registry.host}/team/handed:v1"
    success_model(
        await push_model(source, "ai/smollm2:v1", target, username=USER, password=PASSWORD)
    )
    right = tokens.issue(USER, "repository:team/handed:pull")
    other_repository = tokens.issue(USER, "repository:team/elsewhere:pull")
    async with registry_service(tmp_path / "models") as empty:
        for token in (other_repository, "not-a-jwt"):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await pull_model(empty, target, bearer_token=token)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        before = len(tokens.requests)
        model = success_model(await pull_model(empty, target, bearer_token=right))
        assert model.tags == [target]
        assert len(tokens.requests) == before, "a caller's token must be used as it is"
