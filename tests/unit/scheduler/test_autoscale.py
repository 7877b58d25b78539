from __future__ import annotations

from services.scheduler.autoscale import ModelLoad, ScalePolicy
from tests.unit.scheduler.views import NOW, runner


def policy() -> ScalePolicy:
    return ScalePolicy(queue_threshold=2.0, up_after=2.0, down_after=60.0)


def test_scale_up_only_after_sustained_pressure() -> None:
    scaling = policy()
    busy = ModelLoad(model_id="m", waiting=5, ready=1, starting=0, max_replicas=3)
    assert scaling.decide([busy], NOW).scale_up == ()
    assert scaling.decide([busy], NOW + 1.9).scale_up == ()
    assert scaling.decide([busy], NOW + 2.0).scale_up == ("m",)
    # The new replica has to earn its own window.
    assert scaling.decide([busy], NOW + 2.5).scale_up == ()


def test_pressure_that_drains_resets_the_window() -> None:
    scaling = policy()
    busy = ModelLoad(model_id="m", waiting=5, ready=1, starting=0, max_replicas=3)
    calm = ModelLoad(model_id="m", waiting=1, ready=1, starting=0, max_replicas=3)
    scaling.decide([busy], NOW)
    scaling.decide([calm], NOW + 1.0)
    assert scaling.decide([busy], NOW + 2.5).scale_up == ()
    assert scaling.decide([busy], NOW + 4.5).scale_up == ("m",)


def test_no_scale_up_beyond_max_or_while_a_replica_loads() -> None:
    scaling = policy()
    at_max = ModelLoad(model_id="m", waiting=50, ready=2, starting=0, max_replicas=2)
    loading = ModelLoad(model_id="n", waiting=50, ready=1, starting=1, max_replicas=5)
    scaling.decide([at_max, loading], NOW)
    assert scaling.decide([at_max, loading], NOW + 10).scale_up == ()


def test_below_minimum_scales_up_at_once() -> None:
    load = ModelLoad(model_id="m", waiting=0, ready=0, starting=0, min_replicas=2, max_replicas=2)
    assert policy().decide([load], NOW).scale_up == ("m",)
    loading = ModelLoad(model_id="m", waiting=0, ready=1, starting=1, min_replicas=2)
    assert policy().decide([loading], NOW).scale_up == ()


def test_scale_down_the_longest_idle_extra_replica() -> None:
    old = runner("a", last_used=NOW - 120)
    recent = runner("b", last_used=NOW - 61)
    load = ModelLoad(model_id="m", waiting=0, ready=2, starting=0, idle=(old, recent))
    assert policy().decide([load], NOW).scale_down == (old,)


def test_never_below_one_or_the_minimum_and_not_while_requests_wait() -> None:
    idle = runner("a", last_used=NOW - 999)
    single = ModelLoad(model_id="m", waiting=0, ready=1, starting=0, idle=(idle,))
    at_min = ModelLoad(model_id="m", waiting=0, ready=2, starting=0, idle=(idle,), min_replicas=2)
    waiting = ModelLoad(model_id="m", waiting=1, ready=2, starting=0, idle=(idle,))
    young = ModelLoad(
        model_id="m", waiting=0, ready=2, starting=0, idle=(runner("a", last_used=NOW - 10),)
    )
    for load in (single, at_min, waiting, young):
        assert policy().decide([load], NOW).scale_down == ()
