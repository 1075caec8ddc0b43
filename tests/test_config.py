from pathlib import Path

import pytest

from motionmask.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_loads_and_matches_types():
    cfg = load_config(ROOT / "configs" / "default.yaml")
    assert cfg.streamer.flow.width == 240
    assert isinstance(cfg.streamer.trimap.negative_below, float)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_bundled_config_loads(name):
    cfg = load_config(ROOT / "configs" / name)  # a typo in a shipped example is a user's first error
    if name == "small-movers.yaml":
        assert cfg.streamer.prune.min_fg == 0.02


@pytest.mark.parametrize(
    "text, key",
    [
        ("streamer:\n  flow:\n    widht: 100\n", "streamer.flow.widht"),
        ("streamer:\n  flow:\n    width: wide\n", "streamer.flow.width"),
        ("streamer:\n  source:\n    reconnect: 1\n", "streamer.source.reconnect"),
        ("streamr: {}\n", "streamr"),
        ("streamer:\n  flow:\n    preset: slow\n", "streamer.flow.preset"),
        ("streamer:\n  flow:\n    patch_stride: 9\n", "streamer.flow.patch_stride"),
        ("streamer:\n  prune:\n    min_fg: 0.9\n    max_fg: 0.5\n", "streamer.prune.min_fg"),
        ("streamer:\n  flow: 3\n", "streamer.flow"),
    ],
)
def test_bad_keys_name_the_key_and_file(tmp_path, text, key):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert key in str(e.value)
    assert str(p) in str(e.value)


def test_invalid_yaml_and_missing_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("streamer: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_int_is_accepted_for_float_but_not_the_reverse(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("streamer:\n  trimap:\n    positive_above: 1\n  flow:\n    width: 160.5\n")
    with pytest.raises(ConfigError, match="streamer.flow.width"):
        load_config(p)
