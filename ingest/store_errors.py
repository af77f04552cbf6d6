"""What the store raises. Its own module because every layer catches them:
the committer and the server (full, failed), the tools that read a store
(refused at open), the data directory's lock (in use)."""


class StoreFull(Exception):
    """The map reached store.map_bytes_max, or the disk is full."""


class StoreError(Exception):
    """Any other failure of a write transaction; nothing was written. Also:
    a store refused at open (not ours, another format, in use)."""


class StoreInUse(StoreError):
    """Another process holds the data directory's lock."""


class LogRefused(StoreError):
    """A change-log entry that this node's rules refuse. The primary accepted
    it, so the two apply different rules: their rule settings differ (the
    person window, say). Nothing of the run was written."""


class StoreClosed(StoreError):
    """The store could not be opened again after a snapshot was swapped in.
    The new data file is whole on disk (the swap is one rename), but this
    process has no environment any more: the node stops, and a restart opens
    the new file."""
