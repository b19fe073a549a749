"""Helpers every part of the suite shares: one manual clock (clock.py) and one way to wait
for a condition (eventually.py). Fixtures that start real parts live in tests/fixtures/."""
