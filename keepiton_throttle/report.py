"""Reports: the versioned JSON of an analysis (and, later, OONI export and plots).

The JSON is the published artefact, so its keys are stable and versioned by ``SCHEMA``; a
change that removes or renames a key bumps the version.
"""

from __future__ import annotations

from typing import Any

from . import __version__
from .analysis import AnalysisReport

SCHEMA = "keepiton_throttle.analysis/1"


def analysis_json(report: AnalysisReport, *, generated_at: str | None = None) -> dict[str, Any]:
    """The report as a JSON-ready dict: ``schema``, software, inputs, config, ``targets``."""
    cfg = report.config
    return {
        "schema": SCHEMA,
        "software": {"name": "keepiton_throttle", "version": __version__},
        "generated_at": generated_at,
        "captures": [
            {"file": c.file, "packets": c.packets, "flows": c.flows, "damaged": c.damaged,
             "damage": list(c.damage), "undecoded": list(c.undecoded)}
            for c in report.captures
        ],
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "targets": [v.to_json() for v in report.targets],
    }
