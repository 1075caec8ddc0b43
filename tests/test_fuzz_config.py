"""Config files (motionmask/config.py and the sections it composes: streamer, buffer, publish,
cameras and daemon, learner, export, web) from any YAML text: load_config returns a validated
Config or raises ConfigError naming the file, never a yaml, Unicode, recursion or type error,
and never hangs (billion laughs included).

Hypothesis settings: tests/_fuzz.py (derandomized, no database; MOTIONMASK_FUZZ=deep for more).
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml
from _fuzz import byte_mutations, deep, dict_mutations, fuzz, json_values
from hypothesis import example, given
from hypothesis import strategies as st

from common.config import to_dict
from motionmask.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
DEFAULT_TEXT = (ROOT / "configs" / "default.yaml").read_bytes()
DEFAULT = yaml.safe_load(DEFAULT_TEXT)
FULL = to_dict(Config())  # every key of every section, with its default
FULL["cameras"] = [{"name": "a", "source": "clip.mp4", "streamer": {"flow": {"width": 64}}}]

BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)


def check(path: Path) -> None:
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert str(e).startswith(str(path)), e
        return
    assert isinstance(cfg, Config)
    _all_finite(to_dict(cfg))


def _all_finite(v) -> None:
    if isinstance(v, float):
        assert math.isfinite(v)
    elif isinstance(v, dict):
        for x in v.values():
            _all_finite(x)
    elif isinstance(v, list):
        for x in v:
            _all_finite(x)


def section_mutations(base: dict) -> st.SearchStrategy[dict]:
    """One section (or a section of a section) of `base` mutated."""
    return st.sampled_from(sorted(k for k, v in base.items() if isinstance(v, dict))).flatmap(
        lambda k: dict_mutations(base[k]).map(lambda sec: {**base, k: sec})
    )


texts = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    byte_mutations(DEFAULT_TEXT).map(lambda b: b.decode("utf-8", "replace")),
    dict_mutations(DEFAULT).map(lambda d: yaml.safe_dump(d)),
    section_mutations(FULL).map(lambda d: yaml.safe_dump(d)),
    section_mutations(FULL).flatmap(lambda d: section_mutations(d)).map(lambda d: yaml.safe_dump(d)),
    st.dictionaries(st.sampled_from(sorted(FULL)), json_values, max_size=3).map(lambda d: yaml.safe_dump(d)),
)


def write(tmp_path_factory, data: bytes) -> Path:
    p = tmp_path_factory.mktemp("cfg", numbered=True) / "config.yaml"
    p.write_bytes(data)
    return p


def test_every_shipped_config_loads():
    for p in CONFIGS:
        assert isinstance(load_config(p), Config), p


@fuzz(80, deadline_s=5)
@given(text=texts)
@example(text="streamer:\n  shots:\n    k_sigma: .nan\n")  # was accepted: NaN passes no check
@example(text="daemon:\n  shutdown_timeout_s: .inf\n")  # was accepted
@example(text="learner:\n  model:\n    mean: [.nan, 0.4, 0.4]\n")  # was accepted, NaN in the exported graph
@example(text="streamer:\n  shots:\n    k_sigma: " + "9" * 400 + "\n")  # 1e400 as int: was OverflowError
@example(text=deep(5000))  # was RecursionError out of yaml
@example(text="- " * 3000 + "1")  # the same
@example(text=BILLION_LAUGHS + "cameras: *i\n")
def test_config_text(tmp_path_factory, text):
    check(write(tmp_path_factory, text.encode("utf-8", "surrogatepass")))


@fuzz(40, deadline_s=5)
@given(data=st.one_of(st.binary(max_size=200), byte_mutations(DEFAULT_TEXT)))
@example(data=b"streamer:\n  flow: {width: 64}\n\xff\xfe")  # was UnicodeDecodeError
def test_config_bytes(tmp_path_factory, data):
    check(write(tmp_path_factory, data))
