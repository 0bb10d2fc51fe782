"""Which benchmark measures each registered method, and against which peer.

Read from the method registry: each row (`eqx_attr._registry.methods()`) carries
its `benchmark`, `(script, peer)`: the script under `benchmarks/` that times the
method and the peer it runs side by side with, or `(None, reason)` for a method
that is not timed. `tests/test_benchmarks.py::test_every_registered_method_is_
accounted_for` checks that each named script exists and mentions its method.
"""

from __future__ import annotations

from eqx_attr._registry import methods

COVERAGE: dict[str, tuple[str | None, str]] = {
    entry.name: entry.benchmark for entry in methods()
}
