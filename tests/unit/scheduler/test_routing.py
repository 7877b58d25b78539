from __future__ import annotations

import dataclasses
import timeit

import pytest

from services.scheduler.routing import (
    POLICY_NAMES,
    AffinityRouting,
    LeastLoaded,
    RoundRobin,
    RouteRequest,
    RoutingPolicy,
    make_policy,
)
from services.scheduler.snapshot import RunnerState, RunnerView
from tests.unit.scheduler.views import runner

LEAST_LOADED_CASES = [
    pytest.param([], None, id="no replicas"),
    pytest.param([runner("a", in_flight=3), runner("b", in_flight=1)], "b", id="least in flight"),
    pytest.param(
        [runner("a", last_assigned=20.0), runner("b", last_assigned=10.0)],
        "b",
        id="equal load: least recently assigned",
    ),
    pytest.param(
        [runner("a", last_assigned=5.0), runner("b")],
        "b",
        id="never assigned beats assigned",
    ),
    pytest.param([runner("b"), runner("a")], "a", id="full tie: lowest worker id"),
    pytest.param(
        [runner("a", in_flight=5), runner("b", state=RunnerState.FAILED)],
        "a",
        id="failed replica never chosen",
    ),
    pytest.param(
        [runner("a", in_flight=5), runner("b", pending=True, state=RunnerState.STARTING)],
        "a",
        id="loading replica never chosen",
    ),
    pytest.param([runner("a", state=RunnerState.DRAINING)], None, id="draining never chosen"),
    pytest.param([runner("a", "other")], None, id="other model ignored"),
]


@pytest.mark.parametrize("policy_name", POLICY_NAMES)
@pytest.mark.parametrize(("replicas", "expected"), LEAST_LOADED_CASES)
def test_without_history_every_policy_but_round_robin_is_least_loaded(
    policy_name: str, replicas: list[RunnerView], expected: str | None
) -> None:
    policy = make_policy(policy_name, affinity_entries=100, max_imbalance=2)
    chosen = policy.choose(replicas, RouteRequest(model_id="m", affinity_key="session:1"))
    if policy_name == "round-robin" and expected is not None:
        # Round robin ignores load; it starts at the lowest worker id among the eligible.
        eligible = sorted(r.worker_id for r in replicas if r.routable and r.model_id == "m")
        expected = eligible[0]
    assert (chosen.worker_id if chosen else None) == expected


def test_make_policy() -> None:
    assert isinstance(make_policy("least-loaded", affinity_entries=1, max_imbalance=0), LeastLoaded)
    assert isinstance(make_policy("round-robin", affinity_entries=1, max_imbalance=0), RoundRobin)
    assert isinstance(make_policy("affinity", affinity_entries=1, max_imbalance=0), AffinityRouting)
    with pytest.raises(ValueError, match="least-loaded"):
        make_policy("random", affinity_entries=1, max_imbalance=0)


@pytest.mark.parametrize(("entries", "imbalance"), [(0, 1), (1, -1)])
def test_affinity_limits_are_checked(entries: int, imbalance: int) -> None:
    with pytest.raises(ValueError):
        AffinityRouting(max_entries=entries, max_imbalance=imbalance)


def serve(policy: RoutingPolicy, replicas: list[RunnerView], request: RouteRequest) -> str:
    """Choose, take the lease (count it), record: what the control plane does."""
    chosen = policy.choose(replicas, request)
    assert chosen is not None
    policy.record(chosen, request)
    index = replicas.index(chosen)
    replicas[index] = dataclasses.replace(chosen, in_flight=chosen.in_flight + 1)
    return chosen.worker_id


def release(replicas: list[RunnerView], worker_id: str) -> None:
    for index, replica in enumerate(replicas):
        if replica.worker_id == worker_id:
            replicas[index] = dataclasses.replace(replica, in_flight=replica.in_flight - 1)


def test_round_robin_rotates_per_model_and_over_changing_replicas() -> None:
    policy = RoundRobin()
    replicas = [runner("c"), runner("a"), runner("b")]
    other = [runner("a", "n"), runner("b", "n")]
    order = [serve(policy, replicas, RouteRequest("m")) for _ in range(4)]
    assert order == ["a", "b", "c", "a"]
    assert serve(policy, other, RouteRequest("n")) == "a"
    # b went away: after a comes c, then a again.
    replicas = [runner("a"), runner("c")]
    assert [serve(policy, replicas, RouteRequest("m")) for _ in range(3)] == ["c", "a", "c"]


def test_round_robin_ignores_load() -> None:
    policy = RoundRobin()
    replicas = [runner("a", in_flight=9), runner("b")]
    assert [serve(policy, replicas, RouteRequest("m")) for _ in range(2)] == ["a", "b"]


def test_session_sticks_to_its_replica() -> None:
    policy = AffinityRouting(max_entries=100, max_imbalance=2)
    replicas = [runner("a"), runner("b"), runner("c")]
    first = serve(policy, replicas, RouteRequest("m", affinity_key="session:x"))
    release(replicas, first)
    # Other traffic makes `first` no longer the least recently assigned or least loaded.
    replicas = [
        dataclasses.replace(r, last_assigned=50.0) if r.worker_id == first else r for r in replicas
    ]
    for _ in range(3):
        turn = serve(policy, replicas, RouteRequest("m", affinity_key="session:x"))
        assert turn == first
        release(replicas, turn)
    assert serve(policy, replicas, RouteRequest("m", affinity_key="session:y")) != first


def test_sessions_are_per_model() -> None:
    policy = AffinityRouting(max_entries=100, max_imbalance=2)
    policy.record(runner("b", "m"), RouteRequest("m", affinity_key="session:x"))
    chosen = policy.choose([runner("a", "n"), runner("b", "n")], RouteRequest("n", "session:x"))
    assert chosen is not None and chosen.worker_id == "a"


def test_longest_matching_prefix_wins() -> None:
    policy = AffinityRouting(max_entries=100, max_imbalance=5)
    policy.record(runner("a"), RouteRequest("m", prefix_hashes=(1, 2)))
    policy.record(runner("b"), RouteRequest("m", prefix_hashes=(1, 2, 3, 4)))
    policy.record(runner("c"), RouteRequest("m", prefix_hashes=(9,)))
    replicas = [runner("a"), runner("b"), runner("c"), runner("d")]
    # 1 and 2 were last served by b (refreshed), so all four prefixes lead to b.
    assert _choose(policy, replicas, (1, 2, 3, 4, 5)) == "b"
    assert _choose(policy, replicas, (1, 2, 7)) == "b"
    assert _choose(policy, replicas, (9, 10)) == "c"
    assert _choose(policy, replicas, (42,)) == "a"  # unknown prefix: least loaded, lowest id
    # b is full (not offered): the next longest prefix known elsewhere.
    policy.record(runner("a"), RouteRequest("m", prefix_hashes=(1,)))
    assert _choose(policy, [runner("a"), runner("c")], (1, 2, 3, 4)) == "a"


def test_session_beats_prefix() -> None:
    policy = AffinityRouting(max_entries=100, max_imbalance=5)
    policy.record(runner("a"), RouteRequest("m", prefix_hashes=(1, 2, 3)))
    policy.record(runner("b"), RouteRequest("m", affinity_key="user:u"))
    request = RouteRequest("m", affinity_key="user:u", prefix_hashes=(1, 2, 3))
    chosen = policy.choose([runner("a"), runner("b")], request)
    assert chosen is not None and chosen.worker_id == "b"


def _choose(policy: AffinityRouting, replicas: list[RunnerView], prefixes: tuple[int, ...]) -> str:
    chosen = policy.choose(replicas, RouteRequest("m", prefix_hashes=prefixes))
    assert chosen is not None
    return chosen.worker_id


@pytest.mark.parametrize(
    ("target_load", "other_load", "expected"),
    [
        pytest.param(2, 0, "a", id="imbalance at the limit: affinity holds"),
        pytest.param(3, 0, "b", id="beyond the limit: least loaded"),
        pytest.param(7, 5, "a", id="only the difference counts"),
        pytest.param(8, 5, "b", id="difference beyond the limit"),
    ],
)
def test_affinity_yields_to_load(target_load: int, other_load: int, expected: str) -> None:
    policy = AffinityRouting(max_entries=100, max_imbalance=2)
    policy.record(runner("a"), RouteRequest("m", affinity_key="session:s", prefix_hashes=(1,)))
    replicas = [runner("a", in_flight=target_load), runner("b", in_flight=other_load)]
    for request in (
        RouteRequest("m", affinity_key="session:s"),
        RouteRequest("m", prefix_hashes=(1,)),
    ):
        chosen = policy.choose(replicas, request)
        assert chosen is not None and chosen.worker_id == expected


def test_skewed_sessions_spread_instead_of_piling_up() -> None:
    """One hot session prefix shared by every request: affinity alone would send all of them
    to one replica; the load guard keeps the spread within max_imbalance."""
    policy = AffinityRouting(max_entries=1000, max_imbalance=1)
    replicas = [runner("a"), runner("b"), runner("c")]
    for i in range(30):
        serve(policy, replicas, RouteRequest("m", prefix_hashes=(7, i)))
    loads = [r.in_flight for r in replicas]
    assert max(loads) - min(loads) <= 2
    assert sum(loads) == 30


def test_lru_bound() -> None:
    policy = AffinityRouting(max_entries=3, max_imbalance=5)
    policy.record(runner("a"), RouteRequest("m", affinity_key="s1"))
    policy.record(runner("b"), RouteRequest("m", affinity_key="s2"))
    policy.record(runner("c"), RouteRequest("m", affinity_key="s3"))
    policy.record(runner("a"), RouteRequest("m", affinity_key="s1"))  # refresh s1
    policy.record(runner("d"), RouteRequest("m", affinity_key="s4"))  # evicts s2
    assert len(policy) == 3
    replicas = [runner("a"), runner("b"), runner("c"), runner("d")]
    targets = {
        key: policy.target(replicas, RouteRequest("m", affinity_key=key))
        for key in ("s1", "s2", "s3", "s4")
    }
    assert {k: (v.worker_id if v else None) for k, v in targets.items()} == {
        "s1": "a",
        "s2": None,
        "s3": "c",
        "s4": "d",
    }
    policy.record(runner("a"), RouteRequest("m", prefix_hashes=tuple(range(10))))
    assert len(policy) == 3


def test_forget_drops_the_runners_entries_until_it_serves_again() -> None:
    policy = AffinityRouting(max_entries=100, max_imbalance=5)
    policy.record(runner("a"), RouteRequest("m", affinity_key="s", prefix_hashes=(1, 2)))
    policy.record(runner("a", "n"), RouteRequest("n", affinity_key="s"))
    replicas = [runner("a", last_assigned=9.0), runner("b", last_assigned=1.0)]
    assert _choose(policy, replicas, (1, 2)) == "a"
    policy.forget("a", "m")
    assert (
        policy.target(replicas, RouteRequest("m", affinity_key="s", prefix_hashes=(1, 2))) is None
    )
    assert _choose(policy, replicas, (1, 2)) == "b"
    # Other models on the same worker keep their affinity.
    other = policy.target([runner("a", "n")], RouteRequest("n", affinity_key="s"))
    assert other is not None and other.worker_id == "a"
    # Served again after the reload: affinity comes back.
    policy.record(runner("a"), RouteRequest("m", affinity_key="s"))
    again = policy.target(replicas, RouteRequest("m", affinity_key="s"))
    assert again is not None and again.worker_id == "a"


def test_forget_records_stay_bounded() -> None:
    policy = AffinityRouting(max_entries=4, max_imbalance=1)
    for i in range(1000):
        policy.forget(f"w{i}", "m")
        policy.record(runner(f"w{i}"), RouteRequest("m", affinity_key=f"s{i}"))
    assert len(policy) == 4
    assert len(policy._forgotten) <= 4


def test_choose_and_record_are_cheap() -> None:
    """choose()+record() with 32 prefix hashes over 100 replicas, against a full index."""
    policy = AffinityRouting(max_entries=100_000, max_imbalance=2)
    replicas = [runner(f"w{i:03d}", in_flight=i % 3, last_assigned=float(i)) for i in range(100)]
    for i in range(4000):
        policy.record(replicas[i % 100], RouteRequest("m", prefix_hashes=tuple(range(i, i + 32))))
    requests = [
        RouteRequest("m", affinity_key=f"session:{i}", prefix_hashes=tuple(range(i, i + 32)))
        for i in range(1000)
    ]
    position = iter(range(10**9))

    def one() -> None:
        request = requests[next(position) % len(requests)]
        chosen = policy.choose(replicas, request)
        assert chosen is not None
        policy.record(chosen, request)

    best = min(timeit.repeat(one, number=1000, repeat=3)) / 1000
    # Well under the 100 µs budget even on a loaded 2-core machine.
    assert best < 500e-6, f"choose+record took {best * 1e6:.0f} µs"


@pytest.mark.parametrize(
    ("setting", "slots", "target_load", "expected"),
    [
        # Only replicas with a free slot are offered, so the target leads by at most slots - 1.
        pytest.param(2, 2, 1, "a", id="2 slots: one ahead is allowed (the floor)"),
        pytest.param(0, 2, 1, "b", id="2 slots, setting 0: a busy target yields"),
        pytest.param(2, 3, 1, "a", id="3 slots: one ahead is allowed"),
        pytest.param(2, 3, 2, "b", id="3 slots: two ahead yields (uncapped, it never did)"),
        pytest.param(2, 4, 2, "a", id="4 slots: the setting (2) applies"),
        pytest.param(2, 4, 3, "b", id="4 slots: three ahead yields"),
        pytest.param(5, 8, 5, "a", id="8 slots: the setting (5) applies"),
        pytest.param(5, 8, 6, "b", id="8 slots: six ahead yields"),
        pytest.param(2, 0, 2, "a", id="unknown slots: the setting as is"),
    ],
)
def test_affinity_load_guard_is_relative_to_slots(
    setting: int, slots: int, target_load: int, expected: str
) -> None:
    policy = AffinityRouting(max_entries=100, max_imbalance=setting)
    request = RouteRequest("m", affinity_key="session:x")
    policy.record(runner("a", parallel=slots), request)
    replicas = [runner("a", in_flight=target_load, parallel=slots), runner("b", parallel=slots)]
    chosen = policy.choose(replicas, request)
    assert chosen is not None and chosen.worker_id == expected


def test_a_prefix_every_conversation_shares_does_not_pin_new_ones() -> None:
    """Conversations that open with the same system prompt (hash 1) must not all follow the
    worker that served it first: once two conversations went different ways after it, it is
    shared and matches nothing; each conversation's own prefixes still do."""
    policy = AffinityRouting(max_entries=100, max_imbalance=5)
    policy.record(runner("a"), RouteRequest("m", prefix_hashes=(1, 10)))
    policy.record(runner("a"), RouteRequest("m", prefix_hashes=(1, 20)))
    replicas = [runner("a", in_flight=1), runner("b")]
    # A third conversation: only the shared prompt is known, so the least loaded worker.
    assert _choose(policy, replicas, (1, 30)) == "b"
    # The first conversation's next turn still goes where its own prefix is cached.
    assert _choose(policy, replicas, (1, 10, 11)) == "a"


def test_a_prefix_followed_the_same_way_stays_a_match() -> None:
    """A retried or regenerated turn follows its prefix the same way: not shared."""
    policy = AffinityRouting(max_entries=100, max_imbalance=5)
    policy.record(runner("a"), RouteRequest("m", prefix_hashes=(1, 10)))
    policy.record(runner("a"), RouteRequest("m", prefix_hashes=(1, 10)))
    assert _choose(policy, [runner("a", in_flight=1), runner("b")], (1, 40)) == "a"


def test_affinity_waits_for_the_full_replica_that_holds_the_conversation() -> None:
    policy = AffinityRouting(max_entries=100, max_imbalance=2)
    turn1 = RouteRequest(model_id="m", prefix_hashes=(1, 2))
    policy.record(runner("a"), turn1)
    turn2 = RouteRequest(model_id="m", prefix_hashes=(1, 2, 3, 4))
    full_a, free_b = runner("a", in_flight=2), runner("b")
    assert policy.waits_for_busy([free_b], [full_a], turn2)
    # Its replica has a free slot, or it has none anywhere: nothing to wait for.
    assert not policy.waits_for_busy([runner("a", in_flight=1), free_b], [], turn2)
    assert not policy.waits_for_busy(
        [free_b], [full_a], RouteRequest(model_id="m", prefix_hashes=(7,))
    )
    # A free replica that served a longer prefix of it beats the full one that served less.
    policy.record(runner("b"), RouteRequest(model_id="m", prefix_hashes=(1, 2, 3)))
    assert not policy.waits_for_busy([free_b], [full_a], turn2)


def test_session_affinity_waits_for_its_full_replica() -> None:
    policy = AffinityRouting(max_entries=100, max_imbalance=2)
    policy.record(runner("a"), RouteRequest(model_id="m", affinity_key="session:1"))
    request = RouteRequest(model_id="m", affinity_key="session:1")
    assert policy.waits_for_busy([runner("b")], [runner("a", in_flight=4)], request)
    policy.forget("a", "m")
    assert not policy.waits_for_busy([runner("b")], [runner("a", in_flight=4)], request)


@pytest.mark.parametrize("policy", [LeastLoaded(), RoundRobin()], ids=["least-loaded", "rr"])
def test_cache_blind_policies_never_wait(policy: RoutingPolicy) -> None:
    request = RouteRequest(model_id="m", affinity_key="session:1", prefix_hashes=(1,))
    policy.record(runner("a"), request)
    assert not policy.waits_for_busy([runner("b")], [runner("a", in_flight=4)], request)
