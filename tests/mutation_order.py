"""A pytest plugin for `make mutate` only (``-p tests.mutation_order`` in ``[tool.mutmut]``).

mutmut runs each mutant's tests with ``-x`` and stops at the first failure, so running the
cheap tests first kills most mutants in milliseconds: plain unit tests, then property tests
(hypothesis: seconds each), then the tests against fakes at the wire (async: real sockets,
a fake API server). mutmut's fork-server runner passes the tests in no particular order.
"""

from __future__ import annotations

import inspect

import pytest


def _cost(item: pytest.Item) -> int:
    function = getattr(item, "function", None)
    if function is None:
        return 2
    if inspect.iscoroutinefunction(function):
        return 2
    return 1 if getattr(function, "is_hypothesis_test", False) else 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_cost)  # stable: within a rank, the usual order
