"""Targets: the services we check, identified by SNI patterns (bundled TOML + user files)."""

from __future__ import annotations

import fnmatch
import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources

from .errors import InputError


@dataclass(frozen=True)
class Target:
    """A service: a name and the shell-style SNI patterns that identify its flows."""

    name: str
    sni: tuple[str, ...]
    description: str = ""
    endpoints: tuple[str, ...] = ()
    controls: tuple[str, ...] = field(default=())

    def matches(self, sni: str | None) -> bool:
        if not sni:
            return False
        s = sni.lower().rstrip(".")
        return any(fnmatch.fnmatchcase(s, p.lower()) for p in self.sni)


def _parse(doc: dict[str, object], origin: str) -> dict[str, Target]:
    table = doc.get("targets")
    if not isinstance(table, dict):
        raise InputError(f"{origin}: no [targets.NAME] tables")
    out: dict[str, Target] = {}
    for name, spec in table.items():
        if not isinstance(spec, dict):
            raise InputError(f"{origin}: targets.{name} must be a table")
        sni = spec.get("sni")
        if not isinstance(sni, list) or not sni or not all(isinstance(p, str) and p for p in sni):
            raise InputError(f"{origin}: targets.{name}.sni must be a non-empty list of patterns")
        endpoints = spec.get("endpoints", [])
        controls = spec.get("controls", [])
        if not isinstance(endpoints, list) or not isinstance(controls, list):
            raise InputError(f"{origin}: targets.{name}.endpoints/controls must be lists")
        out[name] = Target(name, tuple(sni), str(spec.get("description", "")),
                           tuple(map(str, endpoints)), tuple(map(str, controls)))
    return out


def bundled_targets() -> dict[str, Target]:
    """The bundled list (``keepiton_throttle/data/targets.toml``)."""
    text = resources.files("keepiton_throttle").joinpath("data/targets.toml").read_text("utf-8")
    return _parse(tomllib.loads(text), "bundled targets.toml")


def load_targets(paths: list[str | os.PathLike[str]] | None = None) -> dict[str, Target]:
    """Bundled targets, then each user file in order (same name replaces, new names add)."""
    targets = bundled_targets()
    for p in paths or []:
        try:
            with open(p, "rb") as fh:
                doc = tomllib.load(fh)
        except OSError as exc:
            raise InputError(f"{p}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{p}: not valid TOML: {exc}") from None
        targets.update(_parse(doc, os.fspath(p)))
    return targets


def adhoc_target(pattern: str) -> Target:
    """A target made from a ``--target-sni PATTERN`` given on the command line."""
    if not pattern or any(c.isspace() for c in pattern):
        raise InputError(f"--target-sni: {pattern!r} is not an SNI pattern")
    return Target(pattern, (pattern,), "ad hoc target from the command line")
