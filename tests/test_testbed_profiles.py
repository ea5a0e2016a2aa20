"""Censor profiles: bundled TOML files, validation messages, SNI patterns."""

from __future__ import annotations

from pathlib import Path

import pytest

from keepiton_throttle.testbed.profiles import (
    ProfileError,
    bundled_profiles,
    load_profile,
    profile_from_dict,
    sni_matches,
)


def test_bundled_profiles_load_and_round_trip() -> None:
    names = bundled_profiles()
    assert names == ["clean", "lossy", "slow-link", "twitter-2021", "youtube-2024"]
    for name in names:
        p = load_profile(name)
        assert p.name == name and p.description
        assert profile_from_dict(p.to_dict(), name=name) == p


def test_bundled_profiles_say_what_the_issue_asks() -> None:
    tw = load_profile("twitter-2021")
    (rule,) = tw.rules
    assert rule.action == "police" and 120_000 <= rule.rate_bps <= 140_000
    assert set(rule.patterns) == {"*.twimg.com", "twimg.com", "t.co"}
    yt = load_profile("youtube-2024")
    assert yt.rules[0].action == "shape" and yt.rules[0].patterns == ("*.googlevideo.com",)
    slow = load_profile("slow-link")
    assert slow.rules == () and slow.link.rate_bps is not None
    assert load_profile("clean").rules == () and load_profile("clean").link.loss == 0
    assert load_profile("lossy").link.loss > 0


def test_policy_label_matches_shared_corpus_schema() -> None:
    label = load_profile("twitter-2021").to_policy_label()
    for key in (
        "type",
        "rate_bps",
        "bucket_bytes",
        "queue_bytes",
        "onset_bytes",
        "dpi_mode",
        "delay_ms_each_way",
        "jitter_ms",
        "loss",
        "link_tbf",
        "byte_accounting",
    ):
        assert key in label
    assert label["type"] == "police"
    assert load_profile("slow-link").to_policy_label()["link_tbf"]["rate_bps"] == 3_000_000


def test_profile_from_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        '[link]\ndelay_ms = 5\n[[rule]]\npatterns = ["a.test"]\naction = "police"\nrate_bps = 64000\n'
    )
    p = load_profile(str(path))
    assert p.name == "mine" and p.link.delay_ms == 5 and p.rules[0].rate_bps == 64000


@pytest.mark.parametrize(
    "data,message",
    [
        ({"link": {"loss": 1.5}}, r"link\.loss must be in \[0, 1\], got 1\.5"),
        ({"link": {"delay_ms": "5"}}, r"link\.delay_ms must be a number"),
        ({"link": {"delay": 5}}, r"link: unknown key 'delay'"),
        ({"dpi": {"mode": "magic"}}, r"dpi\.mode must be one of reassemble, first-segment"),
        (
            {"rule": [{"patterns": ["a"], "action": "drop", "rate_bps": 1000}]},
            r"rule\[0\]\.action must be one of",
        ),
        (
            {"rule": [{"patterns": [], "action": "police", "rate_bps": 1000}]},
            r"rule\[0\]\.patterns must be",
        ),
        ({"rule": [{"patterns": ["a"], "action": "police"}]}, r"rule\[0\]\.rate_bps is required"),
        (
            {"rule": [{"patterns": ["a"], "action": "shape", "rate_bps": 1000}]},
            r"queue_bytes is required",
        ),
        (
            {
                "rule": [
                    {"patterns": ["a"], "action": "police", "rate_bps": 1000, "bucket_bytes": 100}
                ]
            },
            r"bucket_bytes must be >= 1500",
        ),
    ],
)
def test_validation_names_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        profile_from_dict(data, name="p")


def test_unknown_profile_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="unknown profile 'nope'.*twitter-2021"):
        load_profile("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text("[link\n")
    with pytest.raises(ProfileError, match="invalid TOML"):
        load_profile(str(bad))
    with pytest.raises(ProfileError, match="cannot read profile"):
        load_profile(str(tmp_path / "missing.toml"))


@pytest.mark.parametrize(
    "sni,hit",
    [
        ("abs.twimg.com", True),
        ("a.b.twimg.com", True),
        ("twimg.com", True),
        ("TwImg.Com.", True),
        ("t.co", True),
        ("microsoft.com", False),
        ("xtwimg.com", False),
        ("twimg.co", False),
    ],
)
def test_sni_patterns(sni: str, hit: bool) -> None:
    assert sni_matches(sni, ("*.twimg.com", "twimg.com", "t.co")) is hit
