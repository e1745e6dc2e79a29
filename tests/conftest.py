"""Shared fixtures: small and paper-scale graphs."""

from __future__ import annotations

import pytest

import cnas_ir
from cnas_ir.spec import parse_spec
from helpers import EXAMPLES


@pytest.fixture
def tiny_graph():
    return cnas_ir.build(EXAMPLES / "tiny.yaml")


@pytest.fixture(scope="session")
def paper_graph():
    return cnas_ir.build(parse_spec({"name": "paper"}))
