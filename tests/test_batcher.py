"""Batch bounds, as properties: no batch over the size, no entry lost or doubled."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.batcher import BatchAssembler
from worker.entries import Batch, Entry

numbers = st.sampled_from([f"n{i}" for i in range(40)])
chunks = st.lists(st.lists(numbers, max_size=30), max_size=20)


def _entries(chunk: list[str], start: int) -> list[Entry]:
    return [Entry(entry_id=f"{start + i}-0".encode(), number=n) for i, n in enumerate(chunk)]


@given(st.integers(min_value=1, max_value=12), chunks)
def test_no_batch_over_size_and_nothing_lost_or_doubled(size: int, data: list[list[str]]) -> None:
    assembler = BatchAssembler(size, linger_ms=100, consumer="c")
    batches: list[Batch] = []
    fed: list[Entry] = []
    now = 0.0
    for chunk in data:
        entries = _entries(chunk, len(fed))
        fed += entries
        batches += assembler.feed(entries, now)
        now += 0.01
    last = assembler.take_open()
    if last is not None:
        batches.append(last)
    assert all(1 <= len(b.groups) <= size for b in batches)
    settled = [e.entry_id for b in batches for e in b.entries()]
    assert sorted(settled) == sorted(e.entry_id for e in fed)
    # Every full batch except possibly the last holds exactly `size` unique numbers.
    assert all(len(b.groups) == size for b in batches[:-1])


def test_duplicates_ride_along_without_counting_toward_size() -> None:
    assembler = BatchAssembler(2, linger_ms=100, consumer="c")
    full = assembler.feed(_entries(["a", "a", "a", "b"], 0), 0.0)
    assert len(full) == 1
    assert full[0].numbers == ["a", "b"]
    assert full[0].size == 4


def test_linger_closes_a_batch_only_after_its_deadline() -> None:
    assembler = BatchAssembler(10, linger_ms=200, consumer="c")
    assert assembler.time_left_s(0.0) is None
    assert assembler.feed(_entries(["a"], 0), 1.0) == []
    assert (
        assembler.time_left_s(1.1) == 0.09999999999999987
        or abs((assembler.time_left_s(1.1) or 0) - 0.1) < 1e-9
    )
    assert assembler.take_expired(1.19) is None
    expired = assembler.take_expired(1.2)
    assert expired is not None
    assert expired.numbers == ["a"]
    assert assembler.open_batch is None
    assert assembler.room == 10
