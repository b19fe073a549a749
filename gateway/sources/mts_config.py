"""Config of the Coherent MTS head-end source (`sources: mts:`). Filled in by the MTS issue."""

from __future__ import annotations

from gateway.sources.base import SourceSection


class MtsSource(SourceSection):
    pass
