"""Config of the Locus Energy source (`sources: locus:`). Filled in by the Locus issue."""

from __future__ import annotations

from gateway.sources.base import SourceSection


class LocusSource(SourceSection):
    pass
