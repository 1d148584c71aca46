"""Scenario ``signing``: the cost of signing one 100-number ``AcknowledgeTaskResult`` request.

Times the client's own request building (``DomainClient._sign_v3`` and ``_sign_v1`` on a
client that was never entered, so nothing is sent) against a naive V1 signer that
percent-encodes with ``urllib.parse.quote``, once per name and value and once more over the
whole canonical string, as a straightforward port of the documentation would. Each figure
is the best of 5 ``timeit`` repeats, in µs per request; no server is started.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import timeit
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from bench.data import make_ids
from bench.measure import ratio
from bench.scenario import Numbers, Options, Row
from worker.api import signing
from worker.api.client import API_VERSION, DomainClient
from worker.config.credentials import Credentials

NAME = "signing"
ROWS = (
    Row("V3 sign, 100 ids (DomainClient._sign_v3) µs", ("v3_us",), "", 1),
    Row("V1 sign, 100 ids (DomainClient._sign_v1) µs", ("v1_us",), "", 1),
    Row("naive V1 with urllib.parse.quote µs", ("naive_v1_us",), "", 1),
    Row("naive V1 ÷ our V1", ("naive_v1_over_v1",), "", 2),
)
CREDENTIALS = Credentials("testid", "testsecret")
REPEAT = 5


def _quote(value: str) -> str:
    return quote(value, safe="~")


def naive_v1_string_to_sign(params: list[tuple[str, str]]) -> str:
    """The V1 string to sign, built with ``quote`` throughout."""
    query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(params))
    return f"POST&%2F&{_quote(query)}"


def naive_v1(params: list[tuple[str, str]]) -> tuple[str, bytes]:
    """A whole V1 request (query with signature, form body) the naive way."""
    common = [
        ("AccessKeyId", CREDENTIALS.access_key_id),
        ("Action", "AcknowledgeTaskResult"),
        ("Format", "JSON"),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureNonce", uuid.uuid4().hex),
        ("SignatureVersion", "1.0"),
        ("Timestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
        ("Version", API_VERSION),
    ]
    string_to_sign = naive_v1_string_to_sign([*common, *params])
    key = f"{CREDENTIALS.access_key_secret}&".encode()
    digest = hmac.new(key, string_to_sign.encode(), hashlib.sha1).digest()
    common.append(("Signature", base64.b64encode(digest).decode()))
    query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(common))
    return query, "&".join(f"{_quote(k)}={_quote(v)}" for k, v in params).encode()


def best_us(fn: Callable[[], object], iterations: int) -> float:
    """Best of 5 repeats of ``iterations`` calls, µs per call."""
    return min(timeit.repeat(fn, repeat=REPEAT, number=iterations)) / iterations * 1e6


def check_naive_agrees(params: list[tuple[str, str]]) -> None:
    """The naive signer signs the same string as ours, so the comparison is fair."""
    if naive_v1_string_to_sign(params) != signing.v1_string_to_sign("POST", params):
        raise AssertionError("the naive V1 string to sign differs from worker.api.signing's")


def measure(iterations: int) -> Numbers:
    """µs per signed 100-number request: V3, V1, naive V1."""
    params = [("Lang", "en"), *signing.flatten_list("TaskDetailNo", make_ids(100))]
    check_naive_agrees([("Action", "AcknowledgeTaskResult"), *params])
    client = DomainClient(endpoint="http://127.0.0.1:8790", credentials=CREDENTIALS)
    action = "AcknowledgeTaskResult"
    v3 = best_us(lambda: client._sign_v3(action, params), iterations)
    v1 = best_us(lambda: client._sign_v1(action, params), iterations)
    naive = best_us(lambda: naive_v1(params), iterations)
    return {
        "iterations": iterations,
        "v3_us": v3,
        "v1_us": v1,
        "naive_v1_us": naive,
        "naive_v1_over_v1": ratio(naive, v1),
    }


def run_once(opts: Options, workdir: Path, index: int) -> Numbers:
    """One run of the micro-benchmark (``workdir`` unused: nothing is started)."""
    return measure(opts.signing_iterations)
