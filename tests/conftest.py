"""Shared fixtures: small and paper-scale graphs."""

from __future__ import annotations

import pytest
import torch

import cnas_ir
from cnas_ir.spec import parse_spec
from helpers import EXAMPLES


@pytest.fixture
def tiny_graph():
    return cnas_ir.build(EXAMPLES / "tiny.yaml")


@pytest.fixture(scope="session")
def paper_graph():
    return cnas_ir.build(parse_spec({"name": "paper"}))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module: the networks under test run hundreds of tiny
    convs, and with two OpenMP threads on two shared cores each waits on the other (seconds
    per forward); one thread is ~50x faster here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
