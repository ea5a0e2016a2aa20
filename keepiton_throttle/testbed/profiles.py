"""Censor profiles: what the emulator does to traffic, read from TOML.

A profile file looks like this (every key optional except those of a ``[[rule]]``)::

    description = "Russia 2021: Twitter media policed to ~130 kbit/s"
    seed = 1                      # RNG seed of loss and jitter

    [link]                        # applied to all traffic, each direction
    delay_ms = 20.0               # one-way delay (ms)
    jitter_ms = 0.0               # extra delay drawn uniformly from [-jitter, +jitter] (ms), no reordering
    loss = 0.0                    # probability that an IP packet is dropped, per direction
    rate_bps = 3000000            # optional link rate (bit/s): a token-bucket FIFO per direction
    burst_bytes = 16384           #   its bucket (bytes)
    limit_bytes = 65536           #   its queue (bytes); a packet that does not fit is dropped

    [dpi]
    mode = "reassemble"           # or "first-segment"

    [[rule]]                      # a flow whose SNI matches is throttled; first matching rule wins
    patterns = ["*.twimg.com", "twimg.com", "t.co"]
    action = "police"             # token bucket, excess dropped
    rate_bps = 130000             # bit/s
    bucket_bytes = 24576          # bytes
    onset_bytes = 0               # the flow passes untouched until it has carried this many bytes
    direction = "both"            # "down" (server->client), "up" or "both"; one bucket per direction

    # action = "shape": token bucket with a FIFO of queue_bytes, excess delayed, overflow dropped

Bytes are counted as IP packet length; ``onset_bytes`` counts both directions of the flow.
Patterns are shell-style (``fnmatch``) and case-insensitive: ``*.twimg.com`` matches every
subdomain at any depth but not ``twimg.com`` itself, which is why profiles list both.
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = [
    "DPI_MODES",
    "LinkSpec",
    "Profile",
    "ProfileError",
    "RuleSpec",
    "bundled_profiles",
    "load_profile",
    "profile_from_dict",
    "sni_matches",
]

DPI_MODES = ("reassemble", "first-segment")
ACTIONS = ("police", "shape")
DIRECTIONS = ("both", "down", "up")
# a bucket smaller than one full-size IP packet would never pass (police) or never fill (shape)
MIN_BUCKET_BYTES = 1500


class ProfileError(InputError):
    """A profile cannot be found or has a bad value (the message names the key)."""


@dataclass(frozen=True)
class LinkSpec:
    """Impairments of the whole link, applied to every frame in each direction."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    rate_bps: int | None = None
    burst_bytes: int = 16384
    limit_bytes: int = 65536


@dataclass(frozen=True)
class RuleSpec:
    """An SNI-triggered throttle: flows whose SNI matches ``patterns`` get ``action``."""

    patterns: tuple[str, ...]
    action: str
    rate_bps: int
    bucket_bytes: int = 24576
    queue_bytes: int | None = None
    onset_bytes: int = 0
    direction: str = "both"


@dataclass(frozen=True)
class Profile:
    """A whole censor configuration; ``to_dict()`` round-trips through :func:`profile_from_dict`."""

    name: str
    description: str = ""
    seed: int = 1
    link: LinkSpec = field(default_factory=LinkSpec)
    dpi_mode: str = "reassemble"
    rules: tuple[RuleSpec, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rules"] = [dict(r, patterns=list(r["patterns"])) for r in d["rules"]]
        return d

    def match(self, sni: str | None) -> RuleSpec | None:
        """The first rule whose patterns match ``sni``, else None."""
        if not sni:
            return None
        for rule in self.rules:
            if sni_matches(sni, rule.patterns):
                return rule
        return None

    def to_policy_label(self) -> dict[str, Any]:
        """The ``policy`` record of a labels file (the shared testbed corpus' schema)."""
        rule = self.rules[0] if self.rules else None
        link = self.link
        return {
            "type": "none" if rule is None else rule.action,
            "rate_bps": None if rule is None else rule.rate_bps,
            "bucket_bytes": None if rule is None else rule.bucket_bytes,
            "queue_bytes": None if rule is None else rule.queue_bytes,
            "onset_bytes": 0 if rule is None else rule.onset_bytes,
            "direction": None if rule is None else rule.direction,
            "dpi_mode": self.dpi_mode,
            "delay_ms_each_way": link.delay_ms,
            "jitter_ms": link.jitter_ms,
            "loss": link.loss,
            "link_tbf": None
            if link.rate_bps is None
            else {"rate_bps": link.rate_bps, "burst_bytes": link.burst_bytes, "limit_bytes": link.limit_bytes},
            "byte_accounting": "IP packet length; onset counts both directions",
        }


def sni_matches(sni: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """True if ``sni`` (case-insensitive, trailing dot ignored) matches one of ``patterns``."""
    host = sni.lower().rstrip(".")
    return any(fnmatch.fnmatchcase(host, p.lower()) for p in patterns)


def _num(table: dict[str, Any], key: str, where: str, *, lo: float, hi: float | None = None,
         integer: bool = False, default: Any = None) -> Any:
    v = table.get(key)
    if v is None:  # absent (TOML has no null; None comes from Profile.to_dict())
        return default
    ok_type = isinstance(v, int) if integer else isinstance(v, int | float)
    if isinstance(v, bool) or not ok_type:
        kind = "an integer" if integer else "a number"
        raise ProfileError(f"{where}.{key} must be {kind}, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ProfileError(f"{where}.{key} must be {rng}, got {v!r}")
    return v


def _choice(table: dict[str, Any], key: str, where: str, allowed: tuple[str, ...], default: str) -> str:
    v = table.get(key, default)
    if v not in allowed:
        raise ProfileError(f"{where}.{key} must be one of {', '.join(allowed)}; got {v!r}")
    return str(v)


def _check_keys(table: dict[str, Any], where: str, allowed: set[str]) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise ProfileError(f"{where}: unknown key {extra[0]!r} (allowed: {', '.join(sorted(allowed))})")


def profile_from_dict(data: dict[str, Any], *, name: str) -> Profile:
    """Validate a parsed TOML document (or ``Profile.to_dict()``) into a :class:`Profile`."""
    _check_keys(data, name, {"name", "description", "seed", "link", "dpi", "dpi_mode", "rule", "rules"})
    link_t = data.get("link", {})
    if not isinstance(link_t, dict):
        raise ProfileError(f"{name}: [link] must be a table")
    _check_keys(link_t, "link", set(LinkSpec.__dataclass_fields__))
    rate = _num(link_t, "rate_bps", "link", lo=1000, integer=True)
    link = LinkSpec(
        delay_ms=float(_num(link_t, "delay_ms", "link", lo=0, hi=10_000, default=0.0)),
        jitter_ms=float(_num(link_t, "jitter_ms", "link", lo=0, hi=10_000, default=0.0)),
        loss=float(_num(link_t, "loss", "link", lo=0, hi=1, default=0.0)),
        rate_bps=rate,
        burst_bytes=_num(link_t, "burst_bytes", "link", lo=MIN_BUCKET_BYTES, integer=True, default=16384),
        limit_bytes=_num(link_t, "limit_bytes", "link", lo=MIN_BUCKET_BYTES, integer=True, default=65536),
    )
    dpi_t = data.get("dpi", {})
    if not isinstance(dpi_t, dict):
        raise ProfileError(f"{name}: [dpi] must be a table")
    _check_keys(dpi_t, "dpi", {"mode"})
    dpi_mode = _choice(dpi_t, "mode", "dpi", DPI_MODES, str(data.get("dpi_mode", "reassemble")))
    raw_rules = data.get("rule", data.get("rules", []))
    if not isinstance(raw_rules, list):
        raise ProfileError(f"{name}: rules must be written as [[rule]] tables")
    rules = []
    for i, r in enumerate(raw_rules):
        where = f"rule[{i}]"
        if not isinstance(r, dict):
            raise ProfileError(f"{where} must be a table")
        _check_keys(r, where, set(RuleSpec.__dataclass_fields__))
        pats = r.get("patterns")
        if not isinstance(pats, list) or not pats or not all(isinstance(p, str) and p for p in pats):
            raise ProfileError(f"{where}.patterns must be a non-empty list of host patterns")
        action = _choice(r, "action", where, ACTIONS, "")
        if "rate_bps" not in r:
            raise ProfileError(f"{where}.rate_bps is required")
        queue = _num(r, "queue_bytes", where, lo=MIN_BUCKET_BYTES, integer=True)
        if action == "shape" and queue is None:
            raise ProfileError(f"{where}.queue_bytes is required when action = \"shape\"")
        rules.append(RuleSpec(
            patterns=tuple(pats),
            action=action,
            rate_bps=_num(r, "rate_bps", where, lo=1000, integer=True),
            bucket_bytes=_num(r, "bucket_bytes", where, lo=MIN_BUCKET_BYTES, integer=True, default=24576),
            queue_bytes=queue,
            onset_bytes=_num(r, "onset_bytes", where, lo=0, integer=True, default=0),
            direction=_choice(r, "direction", where, DIRECTIONS, "both"),
        ))
    desc = data.get("description", "")
    if not isinstance(desc, str):
        raise ProfileError(f"{name}.description must be a string")
    return Profile(
        name=str(data.get("name", name)),
        description=desc,
        seed=_num(data, "seed", name, lo=0, integer=True, default=1),
        link=link,
        dpi_mode=dpi_mode,
        rules=tuple(rules),
    )


def bundled_profiles() -> list[str]:
    """Names of the profiles shipped in ``keepiton_throttle/testbed/profiles/``."""
    root = resources.files(__package__) / "profiles"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def load_profile(name_or_path: str) -> Profile:
    """Load a bundled profile by name, or a ``.toml`` file by path."""
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        path = Path(name_or_path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ProfileError(f"cannot read profile {name_or_path}: {exc.strerror}") from exc
        name = path.stem
    else:
        res = resources.files(__package__) / "profiles" / f"{name_or_path}.toml"
        if not res.is_file():
            raise ProfileError(
                f"unknown profile {name_or_path!r} (bundled: {', '.join(bundled_profiles())}; or give a .toml path)"
            )
        text = res.read_text(encoding="utf-8")
        name = name_or_path
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile {name}: invalid TOML: {exc}") from exc
    return profile_from_dict(data, name=name)
