"""Watching a running worker: a read-only view of its state (``view``), the ``worker.stats``
log event (``reporter``), ``/metrics`` (``metrics``), the HTTP endpoint (``endpoint``), the
counting wrappers around the client and limiter (``metered``), and starting them (``launch``)."""
