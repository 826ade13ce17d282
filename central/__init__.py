"""Campus-side services: ingest from MQTT, the stores, the ledger, commands."""
