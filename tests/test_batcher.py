"""Batch bounds, as properties: no batch over the size, no entry lost or doubled."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.entries import Batch, Entry
from worker.pipeline.batcher import BatchAssembler

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
    batches += assembler.take_open()
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
    assert assembler.take_expired(1.19) == []
    [expired] = assembler.take_expired(1.2)
    assert expired.numbers == ["a"]
    assert assembler.open_batch is None
    assert assembler.room == 10


accounts = st.sampled_from(["default", "eu", "cn"])


@given(st.integers(min_value=1, max_value=8), st.lists(st.tuples(numbers, accounts), max_size=80))
def test_batches_never_mix_accounts(size: int, data: list[tuple[str, str]]) -> None:
    assembler = BatchAssembler(size, linger_ms=100, consumer="c")
    fed = [Entry(entry_id=f"{i}-0".encode(), number=n, account=a) for i, (n, a) in enumerate(data)]
    batches = assembler.feed(fed, 0.0) + assembler.take_open()
    for batch in batches:
        assert {e.account for e in batch.entries()} == {batch.account}
        assert 1 <= len(batch.groups) <= size
    assert sorted(e.entry_id for b in batches for e in b.entries()) == sorted(
        e.entry_id for e in fed
    )


def test_each_account_lingers_on_its_own_clock() -> None:
    assembler = BatchAssembler(10, linger_ms=200, consumer="c")
    assembler.feed([Entry(b"1-0", "a")], 1.0)
    assembler.feed([Entry(b"2-0", "b", account="eu")], 1.1)
    assert abs((assembler.time_left_s(1.15) or 0) - 0.05) < 1e-9  # the older batch's deadline
    [first] = assembler.take_expired(1.2)
    assert (first.account, first.numbers) == ("default", ["a"])
    assert abs((assembler.time_left_s(1.2) or 0) - 0.1) < 1e-9
    [second] = assembler.take_expired(1.3)
    assert (second.account, second.numbers) == ("eu", ["b"])
    assert assembler.take_open() == []
