"""What the start-delimited framers (DSMR P1, SML) share: the buffer and the skipped bytes.

Invariants:
- Bytes skipped before the first frame start are no error (the port opened, or the head
  joined, mid-telegram); after it, every skipped byte a framer counts is garbage.
- A gap's garbage is reported once, as one FrameProblem, when the next frame start is reached.
"""

from __future__ import annotations

from drivers.serial.lines import FrameProblem


class StartSyncedFramer:
    """State of a framer that resynchronises on a start sequence (subclasses: `feed`)."""

    #: What one frame is called in the gap report.
    FRAME_NAME = "telegrams"

    def __init__(self) -> None:
        self._buffer = bytearray()
        #: Until the first start: skipping is no error.
        self._synced = False
        #: Bytes skipped since the last start that count as garbage (reported once per gap).
        self._garbage = 0

    def _at_start(self, found: list[bytes | FrameProblem]) -> None:
        """The buffer now begins with a frame start: report the gap before it, if any."""
        if self._garbage:
            gap = f"{self._garbage} byte(s) between {self.FRAME_NAME}"
            found.append(FrameProblem("garbage", gap))
            self._garbage = 0
        self._synced = True
