"""The stand-in's task store: finished task results waiting to be acknowledged.

A seeded task-detail number is "finished and unacknowledged" until a request confirms it;
then ``PollTaskResult`` stops returning it, as the service does. Besides the service's own
behaviour the store keeps the evidence tests and benchmarks check: how many times each
number was confirmed (including redundant re-confirmations), how many re-confirmation
attempts arrived, and how many confirmations a fault silently dropped.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

SUCCEEDED = 2
"""``TaskResultStatus`` / ``TaskStatusCode`` of a task that succeeded."""
FAILED = 3
"""``TaskResultStatus`` / ``TaskStatusCode`` of a task that failed."""

_STATUS_NAMES = {SUCCEEDED: "EXECUTE_SUCCESS", FAILED: "EXECUTE_FAILURE"}
_TASK_TYPES = {
    "ORDER_RENEW": "Renew domain",
    "CHANGE_DNS": "Change DNS servers",
    "CHANGE_HOLDER": "Change registrant",
    "ORDER_ACTIVATE": "Register domain",
}
_FAILED_SHARE = 0.1  # one in ten generated tasks failed, so status filters have something to find


@dataclass(frozen=True, slots=True)
class StoredTask:
    """One finished task result, with the fields ``PollTaskResult`` returns."""

    task_detail_no: str
    task_no: str
    domain_name: str
    instance_id: str
    task_type: str
    status_code: int
    try_count: int
    create_time: str
    update_time: str

    def as_api(self) -> dict[str, object]:
        """The ``Data.TaskDetail[]`` element of a ``PollTaskResult`` answer."""
        failed = self.status_code == FAILED
        return {
            "TaskDetailNo": self.task_detail_no,
            "TaskNo": self.task_no,
            "DomainName": self.domain_name,
            "InstanceId": self.instance_id,
            "TaskType": self.task_type,
            "TaskTypeDescription": _TASK_TYPES.get(self.task_type, self.task_type),
            "TaskStatus": _STATUS_NAMES.get(self.status_code, "EXECUTE_SUCCESS"),
            "TaskStatusCode": self.status_code,
            "TaskResult": "" if failed else "OK",
            "ErrorMsg": "Registry refused the operation" if failed else "",
            "TryCount": self.try_count,
            "CreateTime": self.create_time,
            "UpdateTime": self.update_time,
        }


@dataclass(frozen=True, slots=True)
class PollFilter:
    """Optional ``PollTaskResult`` filters; ``None`` matches everything."""

    task_no: str | None = None
    domain_name: str | None = None
    instance_id: str | None = None
    status: int | None = None

    def matches(self, task: StoredTask) -> bool:
        """Whether ``task`` passes every filter that is set."""
        return (
            (self.task_no is None or task.task_no == self.task_no)
            and (self.domain_name is None or task.domain_name == self.domain_name)
            and (self.instance_id is None or task.instance_id == self.instance_id)
            and (self.status is None or task.status_code == self.status)
        )

    @property
    def is_empty(self) -> bool:
        """True when no filter is set (paging can then skip the scan)."""
        return self == _NO_FILTER


_NO_FILTER = PollFilter()


@dataclass(frozen=True, slots=True)
class Page:
    """One page of unacknowledged results; ``total`` counts all that match the filter."""

    page_num: int
    page_size: int
    total: int
    items: list[StoredTask]

    @property
    def total_pages(self) -> int:
        """Number of pages of ``page_size`` holding ``total`` items."""
        return -(-self.total // self.page_size)


class TaskStore:
    """Finished, unacknowledged task results in insertion order, and what confirmed them.

    Not thread-safe: the stand-in runs on one event loop.
    """

    def __init__(self, *, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._pending: dict[str, StoredTask] = {}  # insertion order is poll order
        self._confirmations: dict[str, int] = {}  # number -> requests that confirmed it
        self.reconfirm_attempts = 0
        """Already confirmed numbers submitted again (each answered with 0)."""
        self.dropped = 0
        """Confirmations a fault swallowed: answered as 0, the number stays pending."""

    # --- seeding ----------------------------------------------------------------------

    def seed(
        self,
        ids: Iterable[str],
        *,
        task_no: str | None = None,
        domain: str | None = None,
        status: int | None = None,
    ) -> list[str]:
        """Add numbers as finished and unacknowledged; returns the ones newly added.

        Numbers already known (pending or confirmed) are left as they are. Fields not given
        are made up, so every result looks like one the service would return.
        """
        added: list[str] = []
        for number in ids:
            if number in self._pending or number in self._confirmations:
                continue
            self._pending[number] = self._make_task(number, task_no, domain, status)
            added.append(number)
        return added

    def seed_random(
        self,
        count: int,
        *,
        task_no: str | None = None,
        domain: str | None = None,
        status: int | None = None,
    ) -> list[str]:
        """Generate ``count`` random 32-hex numbers and seed them (fields as in ``seed``)."""
        ids = [f"{self._rng.getrandbits(128):032x}" for _ in range(count)]
        return self.seed(ids, task_no=task_no, domain=domain, status=status)

    def _make_task(
        self, number: str, task_no: str | None, domain: str | None, status: int | None
    ) -> StoredTask:
        rng = self._rng
        if status is None:
            status = FAILED if rng.random() < _FAILED_SHARE else SUCCEEDED
        now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        return StoredTask(
            task_detail_no=number,
            task_no=task_no or f"{rng.getrandbits(128):032x}",
            domain_name=domain or f"example-{rng.randrange(10_000):04d}.com",
            instance_id=f"S{rng.randrange(10**18):018d}",
            task_type=rng.choice(list(_TASK_TYPES)),
            status_code=status,
            try_count=1,
            create_time=now,
            update_time=now,
        )

    # --- the service's behaviour ------------------------------------------------------

    def acknowledge(self, ids: Iterable[str], *, drop: Callable[[], bool] | None = None) -> int:
        """Confirm ``ids``; returns how many distinct numbers this call newly confirmed.

        Unknown numbers count 0. Already confirmed numbers count 0 and add to
        ``reconfirm_attempts``. A duplicate inside one call counts once. ``drop`` is asked
        once per pending number: when it says so, the confirmation is lost (not counted,
        the number stays pending), as in a silent failure of the service.
        """
        confirmed = 0
        for number in dict.fromkeys(ids):
            if number in self._pending:
                if drop is not None and drop():
                    self.dropped += 1
                    continue
                del self._pending[number]
                self._confirmations[number] = 1
                confirmed += 1
            elif number in self._confirmations:
                self._confirmations[number] += 1
                self.reconfirm_attempts += 1
        return confirmed

    def poll(self, page_num: int, page_size: int, filters: PollFilter = _NO_FILTER) -> Page:
        """Page ``page_num`` (from 1) of unacknowledged results matching ``filters``."""
        start = (page_num - 1) * page_size
        if filters.is_empty:
            matching: Iterator[StoredTask] = iter(self._pending.values())
            total = len(self._pending)
            items = list(itertools.islice(matching, start, start + page_size))
            return Page(page_num, page_size, total, items)
        selected = [t for t in self._pending.values() if filters.matches(t)]
        return Page(page_num, page_size, len(selected), selected[start : start + page_size])

    # --- evidence for tests -----------------------------------------------------------

    def confirmation_count(self, number: str) -> int:
        """How many requests confirmed ``number`` (1 for a well-behaved client, 0 if never)."""
        return self._confirmations.get(number, 0)

    def confirmed_more_than_once(self) -> list[str]:
        """Numbers that were submitted again after being confirmed (should be empty)."""
        return [n for n, count in self._confirmations.items() if count > 1]

    def confirmed_ids(self) -> list[str]:
        """Every confirmed number, in the order they were confirmed."""
        return list(self._confirmations)

    def pending_ids(self, limit: int | None = None) -> list[str]:
        """Unacknowledged numbers in poll order, at most ``limit`` of them."""
        return list(itertools.islice(self._pending, limit))

    @property
    def pending_count(self) -> int:
        """Number of unacknowledged results."""
        return len(self._pending)

    @property
    def confirmed_count(self) -> int:
        """Number of distinct confirmed numbers."""
        return len(self._confirmations)
