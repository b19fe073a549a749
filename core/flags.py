"""Quality marks a sample may carry (`Sample.flags`); uplinks decide what each one means."""

from __future__ import annotations

from typing import Final

#: Stamped while the wall clock was not trusted (gateway.clock.hold): its time may be wrong.
CLOCK_UNSYNCED: Final = "clock_unsynced"
#: A lifetime counter went down since the meter's previous sample (gateway.counters).
COUNTER_RESET: Final = "counter_reset"
#: A lifetime energy counter rose faster than the meter's maximum power allows.
COUNTER_JUMP: Final = "counter_jump"
#: A value outside its channel type's physical range was read (gateway.plausibility): that
#: value is not in the sample; the others are as the meter said.
IMPLAUSIBLE: Final = "implausible"
#: Flags that start a new series of a meter's counters (uplinks must not difference across).
COUNTER_FLAGS: Final = frozenset({COUNTER_RESET, COUNTER_JUMP})
