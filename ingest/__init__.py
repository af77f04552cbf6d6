"""ingest: the scan-ingest core of a mass-testing sampling network."""

__version__ = "0.1.0"
