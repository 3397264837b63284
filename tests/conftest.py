"""Shared test fixtures, and the one hypothesis profile every property test runs under."""

from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, settings

# Deterministic (the same examples every run, no example database) and small, so CI is
# repeatable and quick; raise max_examples here when hunting bugs locally.
settings.register_profile("vlalign", max_examples=60, deadline=None, derandomize=True,
                          database=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("vlalign")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: one thread is faster and immune to CPU oversubscription by other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
