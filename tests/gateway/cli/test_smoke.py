from core.sample import Sample


def test_sample_converts_utc_milliseconds() -> None:
    sample = Sample("m", 1_700_000_000_123, {"frequency": 50.0})
    assert Sample.ms_from(sample.ts) == 1_700_000_000_123
