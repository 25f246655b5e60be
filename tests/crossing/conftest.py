"""Fixtures of the end-to-end tests of protocol translation (issue 26): a bridge in front
of a fake upstream of one kind, once per way of naming it (`-o` and an upstreams file),
shared by a module; the upstream's counters and faults reset before each test."""

from __future__ import annotations

from typing import Iterator

import pytest
from crossing_helpers import MODES, Leg, crossing


@pytest.fixture(scope="module", params=MODES)
def to_openai(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Leg]:
    """A bridge whose upstream is an OpenAI-only API (DeepSeek's reasoning_content)."""
    with crossing("openai", request.param, tmp_path_factory.mktemp("openai")) as leg:
        yield leg


@pytest.fixture(scope="module", params=MODES)
def to_anthropic(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Leg]:
    """A bridge whose upstream is Claude's API only (x-api-key, anthropic-version)."""
    with crossing("anthropic", request.param, tmp_path_factory.mktemp("anthropic")) as leg:
        yield leg


@pytest.fixture
def openai_leg(to_openai: Leg) -> Leg:
    to_openai.upstream.reset()
    return to_openai


@pytest.fixture
def anthropic_leg(to_anthropic: Leg) -> Leg:
    to_anthropic.upstream.reset()
    return to_anthropic

