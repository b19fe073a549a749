"""Fault injection: kill -9, an absent broker, a full disk, a corrupt store, broken meters."""
