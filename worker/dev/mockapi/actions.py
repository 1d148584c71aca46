"""The two Domain API actions the stand-in serves, on already authenticated parameters.

Each takes the request parameters (query merged with a form body) and returns the JSON
answer, or raises :class:`ApiFailure` with the service's code for bad input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from worker.dev.mockapi.replies import (
    ApiFailure,
    invalid_parameter,
    missing_parameter,
    new_request_id,
)
from worker.dev.mockapi.state import Page, PollFilter, TaskStore

ACKNOWLEDGE = "AcknowledgeTaskResult"
POLL = "PollTaskResult"
ACTIONS = frozenset({ACKNOWLEDGE, POLL})
MAX_PAGE_SIZE = 1000
_ID_PREFIX = "TaskDetailNo."


def task_detail_numbers(params: Mapping[str, str]) -> list[str]:
    """The ``TaskDetailNo.N`` list in N order (N from 1), empty values skipped."""
    numbered: list[tuple[int, str]] = []
    for name, value in params.items():
        if name.startswith(_ID_PREFIX) and value:
            index = name[len(_ID_PREFIX) :]
            if index.isascii() and index.isdigit() and int(index) >= 1:
                numbered.append((int(index), value))
    numbered.sort()
    return [value for _, value in numbered]


def acknowledge(
    ids: list[str], store: TaskStore, drop: Callable[[], bool] | None
) -> dict[str, object]:
    """``AcknowledgeTaskResult``: ``Result`` is how many numbers were newly confirmed."""
    if not ids:
        raise ApiFailure(400, "MissingTaskDetailNo", "TaskDetailNo is mandatory for this action.")
    return {"RequestId": new_request_id(), "Result": store.acknowledge(ids, drop=drop)}


def poll(params: Mapping[str, str], store: TaskStore) -> dict[str, object]:
    """``PollTaskResult``: one page of finished, unacknowledged task results."""
    page_num = _int_param(params, "PageNum", minimum=1, maximum=None)
    page_size = _int_param(params, "PageSize", minimum=1, maximum=MAX_PAGE_SIZE)
    status = params.get("TaskResultStatus")
    filters = PollFilter(
        task_no=params.get("TaskNo") or None,
        domain_name=params.get("DomainName") or None,
        instance_id=params.get("InstanceId") or None,
        status=_int_param(params, "TaskResultStatus", minimum=0, maximum=None) if status else None,
    )
    return _page_answer(store.poll(page_num, page_size, filters))


def _page_answer(page: Page) -> dict[str, object]:
    return {
        "RequestId": new_request_id(),
        "TotalItemNum": page.total,
        "CurrentPageNum": page.page_num,
        "PageSize": page.page_size,
        "TotalPageNum": page.total_pages,
        "PrePage": page.page_num > 1,
        "NextPage": page.page_num < page.total_pages,
        "Data": {"TaskDetail": [task.as_api() for task in page.items]},
    }


def _int_param(params: Mapping[str, str], name: str, *, minimum: int, maximum: int | None) -> int:
    raw = params.get(name)
    if not raw:
        raise missing_parameter(name)
    if not (raw.isascii() and raw.isdigit()):
        raise invalid_parameter(name, f"{raw!r} is not a whole number")
    value = int(raw)
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise invalid_parameter(name, f"must be at least {minimum}{upper}, got {value}")
    return value
