"""Fixtures of the think filter's end-to-end tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def models(standin):
    """The stand-in answering any model name, as a model of its family (`qwen3:t1` is a
    qwen3): each test asks about names of its own, since what a bridge learns of a model
    lasts as long as the bridge."""
    standin.configure(catalogue="any")
    return standin
