"""The store's own tables (gateway.store.database): samples, the newest stamp per meter,
cursors, uplink state and dead letters. An uplink's own tables are its own (`ensure_tables`)."""

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    meter TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    vals TEXT NOT NULL,
    flags TEXT
);
CREATE INDEX IF NOT EXISTS samples_by_meter ON samples (meter, id);
CREATE TABLE IF NOT EXISTS meters (
    meter TEXT PRIMARY KEY,
    last_ts_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    uplink TEXT NOT NULL,
    stream TEXT NOT NULL,
    meter TEXT NOT NULL,
    position INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (uplink, stream)
);
CREATE TABLE IF NOT EXISTS uplink_state (
    uplink TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (uplink, key)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uplink TEXT NOT NULL,
    stream TEXT NOT NULL,
    sample_id INTEGER NOT NULL,
    payload TEXT NOT NULL,
    status INTEGER,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    parked_at_ms INTEGER NOT NULL,
    requeued_at_ms INTEGER
);
"""
