"""Every registered service class is what runtime.Service declares: the host and `make demo` use
nothing else of it (issue 10 §9)."""

from __future__ import annotations

import inspect

import pytest
from fleetloop.runtime import SERVICES, Service, service_class


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_each_service_class_has_the_declared_methods(name):
    cls = service_class(name)
    assert list(inspect.signature(cls).parameters)[:3] == ["settings", "warehouse", "bus"]
    for method in ("run", "settled"):
        declared = inspect.signature(getattr(Service, method))
        assert inspect.iscoroutinefunction(getattr(cls, method)), f"{name}.{method} must be async"
        assert inspect.signature(getattr(cls, method)).parameters.keys() == declared.parameters.keys(), method


def test_no_service_renders_for_the_demo():
    """Renderers live in fleetloop.report, not in services (what the demo prints reads public APIs)."""
    for name in SERVICES:
        cls = service_class(name)
        assert not [m for m in vars(cls) if m.endswith("report")], name
