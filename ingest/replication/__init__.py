"""Replication of the change log from a primary to its standbys."""
