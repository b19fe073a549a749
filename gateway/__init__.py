"""meter-gateway: read meters, keep every sample durably, forward it to energy platforms."""

__version__ = "0.1.0"
