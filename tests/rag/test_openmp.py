"""The OpenMP worker threads torch keeps after a parallel step are given back (rag.openmp), after
a search too, so that generation on other threads is not throttled; torch computes as before."""

from __future__ import annotations

import os

import pytest
import torch

from rag.config import RetrieveSettings
from rag.openmp import release_idle_threads
from rag.retrieve import Retriever
from rag.store.local import LocalStore

QUESTION = "How long is the battery module under warranty?"


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.fixture
def two_torch_threads():
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: torch runs no OpenMP worker thread to give back")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_a_parallel_steps_worker_is_given_back_and_torch_still_computes(two_torch_threads) -> None:
    a = torch.randn(384, 384, generator=torch.Generator().manual_seed(0))
    release_idle_threads()
    baseline = threads()
    expected = a @ a
    assert threads() > baseline, "torch keeps a worker thread after a parallel step"
    assert release_idle_threads()
    assert threads() == baseline
    assert torch.equal(a @ a, expected)


def test_a_search_leaves_no_openmp_worker_behind(sample_kb_dir, embedder, two_torch_threads) -> None:
    with LocalStore.open(sample_kb_dir / "kb" / "sample") as kb:
        retriever = Retriever(kb, embedder, RetrieveSettings())
        retriever.search(QUESTION)  # loads what the search needs, which may start threads of its own
        release_idle_threads()
        baseline = threads()
        embedder.encode_queries([QUESTION])
        assert threads() > baseline, "encoding a query leaves a worker thread"
        release_idle_threads()
        assert retriever.search(QUESTION).found
        assert threads() == baseline
