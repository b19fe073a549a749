"""Meter protocols and register maps: drivers produce canonical channel values, know no clouds."""
