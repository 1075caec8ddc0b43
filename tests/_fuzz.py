"""Shared Hypothesis settings and strategies of the fuzz tests (tests/test_fuzz_*.py).

Reproducible by default: derandomize=True (the examples are a function of the test's source, the
same on every machine and every run) and no example database, so a CI failure is the failure a
developer gets locally, and a passing CI run never turns red without a code change. The cost is
that CI never explores beyond those examples; `MOTIONMASK_FUZZ=deep` runs a random, far longer
search for when a parser changed:

    MOTIONMASK_FUZZ=deep .venv/bin/python -m pytest tests/test_fuzz_protocol.py -q
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

DEEP = os.environ.get("MOTIONMASK_FUZZ", "") == "deep"


def fuzz(examples: int, deadline_s: float | None = 2.0) -> settings:
    """Settings of one fuzz test: `examples` inputs in CI (deep: 20x, random). A deadline far
    above a parser's real time (ms) catches one that hangs or goes quadratic without failing on
    a busy shared machine; socket tests pass None and rely on pytest-timeout."""
    return settings(
        max_examples=examples * 20 if DEEP else examples,
        derandomize=not DEEP,
        database=None,
        deadline=None if deadline_s is None else timedelta(seconds=deadline_s),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
        print_blob=True,
    )


# -- values --------------------------------------------------------------------------------

# Numbers that break naive parsers: NaN, infinities, bools posing as ints, huge and negative ints
awkward_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 0, -1, 2**31, 2**63, -(2**63), 10**30, True, False]),
    st.integers(),
)
awkward_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            "..",
            "../x",
            "/etc/passwd",
            "a" * 300,
            "\x00",
            "é",
            "\ufffd",
            "LATEST",
            "model.onnx",
            "manifest.json",
            "NaN",
        ]
    ),
)
scalars = st.one_of(st.none(), st.booleans(), awkward_numbers, awkward_text)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def deep(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + closer * depth


deeply_nested_json = st.one_of(
    st.integers(500, 20000).map(deep),
    st.integers(500, 20000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.integers(500, 5000).map(lambda n: "[" * n),  # never closed
)
huge_number = st.integers(4300, 20000).map(lambda n: "9" * n)  # beyond Python's int-from-str limit


def json_bytes(value: Any) -> bytes:
    """A value as JSON text as a peer might send it (NaN and Infinity included, as Python writes them)."""
    return json.dumps(value, default=str).encode()


def byte_mutations(data: bytes) -> st.SearchStrategy[bytes]:
    """`data` truncated, with bytes flipped, inserted or deleted, or joined to random bytes."""
    n = len(data)
    truncated = st.integers(0, max(0, n - 1)).map(lambda k: data[:k])
    flipped = st.lists(st.tuples(st.integers(0, max(0, n - 1)), st.integers(1, 255)), min_size=1, max_size=4).map(
        lambda flips: _flip(data, flips)
    )
    inserted = st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=16)).map(
        lambda t: data[: t[0]] + t[1] + data[t[0] :]
    )
    deleted = st.tuples(st.integers(0, n), st.integers(1, 16)).map(lambda t: data[: t[0]] + data[t[0] + t[1] :])
    appended = st.binary(min_size=1, max_size=64).map(lambda b: data + b)
    return st.one_of(truncated, flipped, inserted, deleted, appended)


def _flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    b = bytearray(data)
    for i, x in flips:
        if b:
            b[i % len(b)] ^= x
    return bytes(b)


def dict_mutations(valid: dict[str, Any], extra_keys: tuple[str, ...] = ()) -> st.SearchStrategy[dict[str, Any]]:
    """`valid` with one to three fields replaced by awkward values, removed, or added; nested
    dicts are mutated too. Structured-but-wrong: what a buggy or hostile peer sends."""
    keys = sorted(valid) + list(extra_keys) or ["x"]

    @st.composite
    def mutate(draw: Any) -> dict[str, Any]:
        out = json.loads(json.dumps(valid))  # a deep copy
        for _ in range(draw(st.integers(1, 3))):
            key = draw(st.sampled_from(keys))
            action = draw(st.sampled_from(["replace", "delete", "nest"]))
            if action == "delete":
                out.pop(key, None)
            elif action == "nest" and isinstance(out.get(key), dict) and out[key]:
                out[key] = draw(dict_mutations(out[key]))
            else:
                out[key] = draw(json_values)
        return out

    return mutate()


def malformed_json_bytes(valid: dict[str, Any], extra_keys: tuple[str, ...] = ()) -> st.SearchStrategy[bytes]:
    """Everything a JSON parser of outside bytes meets: random bytes, JSON of any shape, mutated
    valid messages (as objects and as bytes), deep nesting, huge numbers, non-UTF-8."""
    good = json_bytes(valid)
    return st.one_of(
        st.binary(max_size=256),
        json_values.map(json_bytes),
        dict_mutations(valid, extra_keys).map(json_bytes),
        byte_mutations(good),
        deeply_nested_json.map(str.encode),
        huge_number.map(str.encode),
        st.text(max_size=64).map(lambda t: t.encode("utf-16")),
    )
