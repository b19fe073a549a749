"""Uplinks: read the store from their cursors forward, send, then advance the cursors."""
