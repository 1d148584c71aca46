"""``/metrics``: the worker's counters in Prometheus text format, through prometheus-client.

One :class:`~prometheus_client.CollectorRegistry` per worker, not the library's global one,
so several workers in one process (tests, embedding) never collide. Nothing is counted here:
a custom collector turns :class:`~worker.totals.Totals` into metric families at scrape time,
and each scrape first reads the backlog and pending count from Redis (bounded by
``WorkerView.redis_timeout_s``). When that read fails the two gauges are left out and
``ackworker_redis_up`` is 0.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from worker.observe.view import StreamSample, WorkerView
from worker.store.outage import PROBLEM as OUTAGE
from worker.totals import ACTIONS

# The classic text format that generate_latest writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class WorkerCollector:
    """Reads a worker's totals and levels when the registry is collected."""

    def __init__(self, view: WorkerView) -> None:
        self._view = view
        self.stream = StreamSample(None, None, "not read yet")

    def collect(self) -> Iterator[Metric]:
        """Every ``ackworker_`` family; called by the registry on each scrape."""
        yield from self._items()
        yield from self._requests()
        yield from self._limiter()
        yield from self._levels()

    def _items(self) -> Iterator[Metric]:
        t = self._view.totals
        items = CounterMetricFamily(
            "ackworker_items", "Numbers settled, by outcome.", labels=["outcome"]
        )
        items.add_metric(["confirmed"], t.confirmed)
        items.add_metric(["duplicate"], t.duplicates)
        items.add_metric(["dead"], sum(t.dead.values()))
        items.add_metric(["shortfall"], t.shortfall)
        yield items
        dead = CounterMetricFamily(
            "ackworker_dead_items", "Numbers dead-lettered, by reason.", labels=["reason"]
        )
        for reason, count in sorted(t.dead.items()):
            dead.add_metric([reason], count)
        yield dead
        yield CounterMetricFamily(
            "ackworker_overcount_items",
            "Numbers the API counted beyond those sent (recorded for reconciliation).",
            value=t.overcount,
        )
        yield CounterMetricFamily("ackworker_batches", "Batches settled.", value=t.batches)
        yield CounterMetricFamily(
            "ackworker_vanished_items",
            "Pending entries deleted or trimmed from a stream before they were settled.",
            value=t.vanished,
        )

    def _requests(self) -> Iterator[Metric]:
        t = self._view.totals
        yield self._requests_by()
        yield HistogramMetricFamily(
            "ackworker_request_duration_seconds",
            "Seconds from sending an AcknowledgeTaskResult request to its answer or error.",
            buckets=t.latency.cumulative(),
            sum_value=t.latency.sum_s,
        )
        retries = CounterMetricFamily(
            "ackworker_retries", "Retries scheduled, by error code.", labels=["code"]
        )
        for code, count in sorted(t.retries.items()):
            retries.add_metric([code], count)
        yield retries
        yield GaugeMetricFamily(
            "ackworker_requests_in_flight", "Requests awaiting an answer.", value=t.in_flight
        )

    def _requests_by(self) -> Metric:
        """Every action of every configured account, 0 when none was sent, so a series never
        appears out of nothing (``rate()`` and ``increase()`` would miss its first count)."""
        t = self._view.totals
        requests = CounterMetricFamily(
            "ackworker_requests",
            "API requests sent (attempts), by action (acknowledge: AcknowledgeTaskResult, "
            "poll: PollTaskResult to verify a shortfall) and account.",
            labels=["action", "account"],
        )
        accounts = set(self._view.gates) | {account for _, account in t.requests_by}
        actions = set(ACTIONS) | {action for action, _ in t.requests_by}
        for account in sorted(accounts):
            for action in sorted(actions):
                requests.add_metric([action, account], t.requests_by[action, account])
        return requests

    def _limiter(self) -> Iterator[Metric]:
        t, view = self._view.totals, self._view
        yield CounterMetricFamily(
            "ackworker_rate_limit_wait_seconds",
            "Seconds senders waited for a fleet-wide rate-limit slot (summed over senders).",
            value=t.rate_wait_s,
        )
        yield CounterMetricFamily(
            "ackworker_fleet_pauses",
            "Throttling answers that slowed and paused the whole fleet.",
            value=t.fleet_pauses,
        )
        yield CounterMetricFamily(
            "ackworker_outage_wait_seconds",
            "Seconds senders were held by an outage pause (summed over senders).",
            value=t.outage_wait_s,
        )
        yield CounterMetricFamily(
            "ackworker_probes",
            "Requests sent as the fleet's one probe of an endpoint that was away.",
            value=t.probes,
        )
        yield GaugeMetricFamily(
            "ackworker_effective_rate_requests_per_second",
            "The fleet's effective rate as the shared limiter last answered.",
            value=t.effective_rate,
        )
        yield GaugeMetricFamily(
            "ackworker_rate_limit_requests_per_second",
            "The configured fleet-wide rate limit (ACKWORKER_RATE_LIMIT).",
            value=view.rate_limit_rps,
        )
        rates = GaugeMetricFamily(
            "ackworker_account_effective_rate_requests_per_second",
            "Each account's effective rate as its shared limiter last answered.",
            labels=["account"],
        )
        for account, rate in sorted(t.account_rates.items()):
            rates.add_metric([account], rate)
        yield rates

    def _levels(self) -> Iterator[Metric]:
        view, stream = self._view, self.stream
        yield GaugeMetricFamily(
            "ackworker_sending_paused",
            "1 while a credentials, clock or outage problem stops sending, else 0.",
            value=0 if view.sending_problem is None else 1,
        )
        paused = GaugeMetricFamily(
            "ackworker_account_sending_paused",
            "1 while a credentials, clock or outage problem stops sending for the account.",
            labels=["account"],
        )
        outage = GaugeMetricFamily(
            "ackworker_account_outage",
            "1 while the account's sending is paused because its endpoint is away, else 0.",
            labels=["account"],
        )
        for account, gate in sorted(view.gates.items()):
            paused.add_metric([account], 0 if gate.is_open else 1)
            outage.add_metric([account], 1 if gate.problem == OUTAGE else 0)
        yield paused
        yield outage
        yield GaugeMetricFamily(
            "ackworker_held_entries",
            "Entries this process has read and not settled.",
            value=view.held,
        )
        yield GaugeMetricFamily(
            "ackworker_redis_up",
            "1 when this scrape read the backlog and pending count from Redis, else 0.",
            value=1 if stream.error is None else 0,
        )
        if stream.backlog is not None:
            yield GaugeMetricFamily(
                "ackworker_backlog_entries",
                "Entries in the task stream (XLEN).",
                value=stream.backlog,
            )
        if stream.pending is not None:
            yield GaugeMetricFamily(
                "ackworker_pending_entries",
                "Entries delivered to a consumer of the group and not settled (XPENDING).",
                value=stream.pending,
            )


class MetricsExporter:
    """A worker's registry: its own collector plus the process's CPU and memory."""

    def __init__(self, view: WorkerView) -> None:
        self._view = view
        self._collector = WorkerCollector(view)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self._collector)
        ProcessCollector(registry=self.registry)

    async def render(self) -> bytes:
        """Read Redis (bounded), then the whole registry in the text format."""
        self._collector.stream = await self._view.sample_stream()
        return generate_latest(self.registry)
