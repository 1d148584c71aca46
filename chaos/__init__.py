"""The reliability and security suite behind ``make chaos`` (issue 6).

Each scenario module starts real processes (its own ``redis-server`` on a free loopback port,
``python -m worker mock-api`` and one or more ``python -m worker run``), injects one family of
faults, then checks the invariant of :mod:`chaos.invariant` and reports a figure.
:mod:`chaos.run` runs them and writes ``docs/reliability.md``.
"""
