"""Fixtures of the end-to-end tests of protocol translation (issue 26): a bridge in front
of a fake upstream of one kind, for each kind and each way of naming the upstream (`-o`
and an upstreams file), shared by a module (`legs_of` picks a kind's); the upstream's
counters, faults and settings reset before each test."""

from __future__ import annotations

from typing import Iterator

import pytest
from crossing_helpers import LEGS, Leg, crossing, leg_id


@pytest.fixture(scope="module", params=LEGS, ids=leg_id)
def crossed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Leg]:
    kind, mode = request.param
    with crossing(kind, mode, tmp_path_factory.mktemp(f"{kind}-{mode}")) as made:
        yield made


@pytest.fixture
def leg(crossed: Leg) -> Leg:
    crossed.upstream.reset()
    return crossed
