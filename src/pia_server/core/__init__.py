"""Cross-cutting pieces: config, database, wire conventions, errors, rate limits, audit, logs."""
