# cython: language_level=3
"""The binding apply, compiled: ``ingest._apply.apply_binding``.

The rules themselves are written, and read, in ``ingest/rules.py``
(``apply_binding_py``, the plain-Python twin): same checks in the same order,
same outcomes, byte for byte the same store (tests/test_apply_kernel.py
replays random event streams through both and compares the digests). This
file only makes them cheap. The interpreter was a quarter of the binding's
CPU: a frame per WriteTx method, per helper, per attribute. Here the event
goes through one C function that talks to the write transaction's cursors
directly; the LMDB and msgspec calls are the same ones the twin makes.

It is a friend of ``writetx.WriteTx``: it reads and writes the same slots the
methods do (the cursors, ``seq``, ``_counts``). A change to WriteTx's
internals is a change here too; the differential test catches a mismatch.
"""
from ingest import errors, records
from ingest.outcomes import Bound, Duplicate, Rejected
from ingest.keys import MEMBER_POSITION_MAX
from ingest.store_errors import StoreError
from ingest.records import (
    OPEN, PEOPLE, STAT_FIELDS, TUBES_OPENED, EventRecord, LogEntry, Member, PersonBinding, Tube,
)
from cpython.bytes cimport PyBytes_FromStringAndSize
from msgspec import Raw
from msgspec.structs import astuple

cdef object _encode = records.encode
cdef object _decode_tube = records.decode_tube
cdef object _decode_person = records.decode_person
cdef object _decode_event_record = records.decode_event_record
cdef Py_ssize_t _NSTATS = len(STAT_FIELDS)
cdef int _OPEN = OPEN
cdef int _PEOPLE = PEOPLE
cdef int _TUBES_OPENED = TUBES_OPENED
# _member_key packs a position in two bytes; _refusal keeps positions within them
cdef long long _POSITION_MAX = MEMBER_POSITION_MAX


cdef inline bytes _seq_key(unsigned long long seq):
    # keys.seq_key: u64 big-endian, without a Python method call
    cdef char buf[8]
    cdef int i
    for i in range(8):
        buf[7 - i] = <char>(seq & 0xFF)
        seq >>= 8
    return PyBytes_FromStringAndSize(buf, 8)


cdef inline bytes _member_key(bytes tube_key, unsigned int position):
    # keys.member_key: tube, NUL, u16 big-endian position
    cdef char buf[3]
    buf[0] = 0
    buf[1] = <char>((position >> 8) & 0xFF)
    buf[2] = <char>(position & 0xFF)
    return tube_key + PyBytes_FromStringAndSize(buf, 3)


cdef inline void _count(tx, str site, int field):
    # writetx.WriteTx.count, inline: deltas per (site, hour), flushed at commit
    counts = tx._counts
    key = (site, tx._hour)
    deltas = counts.get(key)
    if deltas is None:
        deltas = [0] * _NSTATS
        counts[key] = deltas
    deltas[field] += 1


cdef inline void _append(tx, bytes entry) except *:
    # writetx.WriteTx.append, inline
    cdef unsigned long long seq = tx.seq + 1
    tx.seq = seq
    if not tx._log.put(_seq_key(seq), entry, True, True, True):
        raise StoreError(f"log entry {seq} exists already: the log must only grow")


def apply_binding(tx, ev, str lab, long long window_ms):
    cdef str tube_code = ev.tube
    cdef str person = ev.person
    cdef str event_id = ev.event_id
    cdef str site_id = ev.site_id
    cdef long long scanned_at = ev.scanned_at
    cdef long long pool_size = ev.pool_size
    cdef bytes tube_key = tube_code.encode()
    cdef bytes person_key = person.encode()
    cdef bytes event_key = event_id.encode()
    cdef long long seq, count, position
    cdef list history
    cdef tuple payload
    cdef Py_ssize_t i, n

    tubes = tx._tubes
    persons = tx._persons
    events = tx._events
    raw = tubes.get(tube_key)
    tube = None if raw is None else _decode_tube(raw)
    raw = persons.get(person_key)
    history = [] if raw is None else _decode_person(raw)
    seq = tx.seq + 1
    count = 1 if tube is None else tube.count + 1
    position = 1 if tube is None else tube.slots + 1
    # The fields in BindingEvent order, encoded once for the dedup record and
    # the log entry (a tuple encodes as the same msgpack array as a list).
    payload = astuple(ev)
    raw_payload = Raw(_encode(payload))

    # Same event id: a retry (same payload) or a client bug (different one).
    if not events.put(event_key, _encode(EventRecord(seq, count, raw_payload)), True, False):
        seen = _decode_event_record(events.get(event_key))
        if seen.payload != list(payload):
            return Rejected(errors.EVENT_ID_CONFLICT, "event_id was used before with a different payload", "event_id")
        return Duplicate(event_id, seen.original or event_id, tube_code, seen.count, seen.seq)

    # From here on the event id is claimed; every refusal must release it.
    refusal = _refusal(events, ev, tube_code, site_id, pool_size, scanned_at, tube, history, window_ms)
    if refusal is not None:
        if type(refusal) is Duplicate:
            # rules.py: a pair duplicate's id is remembered and logged
            events.put(event_key, _encode(EventRecord(refusal.seq, refusal.count, raw_payload, "binding",
                                                      refusal.original_event_id)))
            _append(tx, _encode(LogEntry("binding", lab, raw_payload, tx.at_ms)))
            return refusal
        if events.set_key(event_key):
            events.delete()
        return refusal

    if tube is None:
        tube = Tube(site_id, lab, pool_size, _OPEN, seq, count, position)
        _count(tx, site_id, _TUBES_OPENED)
    else:
        tube.count = count
        tube.slots = position
        lab = tube.lab  # rules.py: a tube keeps the lab it was opened with
    tubes.put(tube_key, _encode(tube))
    tx._members.put(_member_key(tube_key, position),
                    _encode(Member(person, event_id, scanned_at, seq)))
    history.append(PersonBinding(tube_code, scanned_at, seq, event_id, site_id, position))
    persons.put(person_key, _encode(history))
    _append(tx, _encode(LogEntry("binding", lab, raw_payload, tx.at_ms)))
    _count(tx, site_id, _PEOPLE)
    return Bound(event_id, tube_code, lab, count, pool_size, seq)


cdef object _refusal(events, ev, str tube_code, str site_id, long long pool_size, long long scanned_at, tube,
                     list history, long long window_ms):
    """rules._refusal: the rules after the event-id check, in the documented order."""
    for b in history:
        if b.tube == tube_code and not b.voided_seq:
            original = _decode_event_record(events.get((<str>b.event_id).encode()))
            return Duplicate(ev.event_id, b.event_id, tube_code, original.count, b.seq)
    if tube is not None:
        if tube.state != _OPEN:
            return Rejected(errors.TUBE_CLOSED, "tube is sealed and takes no more people", "tube")
        if tube.site_id != site_id:
            return Rejected(errors.SITE_MISMATCH, "tube was opened at another site", "site_id")
        if tube.pool_size != pool_size:
            return Rejected(
                errors.POOL_SIZE_MISMATCH, f"tube was opened with pool_size {tube.pool_size}", "pool_size"
            )
        if tube.count >= tube.pool_size:
            people = "person" if tube.pool_size == 1 else "people"
            return Rejected(errors.TUBE_FULL, f"tube already holds {tube.pool_size} {people}", "tube")
        if tube.slots >= _POSITION_MAX:
            return Rejected(errors.TUBE_FULL, f"tube has used all {_POSITION_MAX} positions, voided ones included",
                            "tube")
    if not ev.resample:
        for b in history:
            if not b.voided_seq and abs(<long long>b.scanned_at - scanned_at) < window_ms:
                return Rejected(
                    errors.PERSON_IN_OTHER_TUBE,
                    f"person was bound to tube {b.tube} within the window; send resample=true to bind again",
                    "person",
                    {"other_tube": b.tube},
                )
    return None
