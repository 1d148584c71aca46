"""ackworker: acknowledges Alibaba Cloud Domain API task results from a Redis stream.

The distribution installs this one import package, ``worker`` (the service is a queue
worker; ``ackworker`` is the distribution and the command). Its folders are its layers,
lowest first; a module imports only from its own layer or a lower one (``tests/test_layers.py``
checks it):

- ``worker`` itself: leaf modules every layer uses: :mod:`~worker.errors` (the one exception
  tree), :mod:`~worker.clock`, :mod:`~worker.logs`, :mod:`~worker.retry` (API retries and
  Redis back-off), :mod:`~worker.lifecycle` (two-phase stop), :mod:`~worker.entries` (stream
  entries, batches, holdings), :mod:`~worker.ids` (digests of numbers),
  :mod:`~worker.totals` (what a worker counts).
- :mod:`worker.api`: the Domain API client and request signing.
- :mod:`worker.store`: everything kept in Redis: key names, the connection, reading the
  stream, dedupe memory and leases, the fleet's rate limiter, settling, heartbeats, enqueueing.
- :mod:`worker.config`: settings from file and environment, their value kinds, accounts,
  credentials, and the Redis deployment they describe.
- :mod:`worker.observe`: watching a running worker: its live view, the ``worker.stats``
  reporter, metrics and the HTTP endpoint.
- :mod:`worker.pipeline`: the data path of ``ackworker run`` (router → intake → batcher →
  processor: dedupe → limiter → client → reconciler → settle), the lanes that compose it, the
  runner that owns its tasks, and the poller.
- :mod:`worker.dev`: development only: the demo, the closed loop, throwaway processes and the
  API stand-in. ``ackworker run`` never loads it.
- :mod:`worker.commands`: the ``ackworker`` command line, one module per command.

Reading order for the data path: :mod:`worker.pipeline.runner`, :mod:`worker.pipeline.lanes`,
:mod:`worker.pipeline.intake`, :mod:`worker.pipeline.processor`, then the store modules each
step calls.
"""

__version__ = "0.1.0"
