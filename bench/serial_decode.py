"""How fast telegrams of serial utility meters are decoded and mapped to channels.

A DSMR 5 meter sends one P1 telegram per second, an SML meter one every 1-4 s: decoding must
take a small fraction of that on a Raspberry Pi (roughly 10x slower than a laptop core).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from drivers.serial.dsmr_p1 import decode_telegram
from drivers.serial.iec62056 import parse_data_message
from drivers.serial.obis_map import default_map
from drivers.serial.sml import decode_file
from tests.fakes.serial_meters import data_message
from tests.fakes.telegrams import D0_BLOCK, EMUCS_EXAMPLE, HOLLEY_SML, dsmr5_example


def _rate(work: Callable[[], object], seconds: float = 0.5) -> float:
    """Calls per second of `work` (decode + OBIS mapping), measured for about `seconds`."""
    work()  # warm caches (dsmr-parser compiles its patterns once per version)
    count = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        work()
        count += 1
    return count / elapsed


def measure_decoding() -> dict[str, float]:
    obis = default_map()
    p1, emucs, d0 = dsmr5_example(), EMUCS_EXAMPLE, data_message(D0_BLOCK)
    return {
        "dsmr5": _rate(lambda: obis.apply(decode_telegram(p1, "5").readings)),
        "emucs": _rate(lambda: obis.apply(decode_telegram(emucs, "5B").readings)),
        "sml": _rate(lambda: obis.apply(decode_file(HOLLEY_SML).readings)),
        "d0": _rate(lambda: obis.apply(parse_data_message(d0)[0])),
    }


if __name__ == "__main__":
    for name, rate in measure_decoding().items():
        print(f"{name}: {rate:,.0f} telegrams/s")
