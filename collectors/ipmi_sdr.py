"""The SDR repository (IPMI 2.0 section 33) in as few round trips as the BMC allows.

python-ipmi reads each record as a 5-byte header and then 32-byte chunks, after a Reserve SDR
Repository: 3 requests for a full sensor record, 31 for a 10-sensor BMC. Get SDR with offset 0
needs no reservation and "bytes to read" 0xFF asks for the entire record (section 33.12), so a
BMC that can answer with a whole record costs one request per record. A BMC that cannot
(completion code 0xCA and kin: its messages are shorter than a record; OpenIPMI's ipmi_sim
is one) is read in chunks under a reservation, as ipmitool does, from then on.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from pyipmi.errors import CompletionCodeError, DecodingError

NETFN_STORAGE = 0x0A
CMD_SDR_REPOSITORY_INFO, CMD_RESERVE_SDR, CMD_GET_SDR = 0x20, 0x22, 0x23
ENTIRE_RECORD = 0xFF
LAST_RECORD = 0xFFFF
HEADER_LENGTH = 5
CHUNK = 32  # bytes per Get SDR in the fallback, as python-ipmi; less after a 0xCA
# a BMC that cannot send a whole record says so with one of these (0xCA is the spec's)
WHOLE_REFUSED = frozenset({0xC7, 0xC8, 0xCA, 0xCC, 0xFF})
CC_RESERVATION_CANCELED = 0xC5
MAX_RECORDS = 4096  # a repository holds at most 0xFFFF ids; a loop in the next ids stops here
MAX_RESERVATIONS = 5

# (netfn, cmd, data) -> response data after a good completion code (CompletionCodeError else)
Raw = Callable[[int, int, bytes], bytes]


def repository_stamp(raw: Raw) -> tuple[int, int]:
    """(record count, most recent addition timestamp) of Get SDR Repository Info: what changes
    when sensors are added or removed."""
    data = raw(NETFN_STORAGE, CMD_SDR_REPOSITORY_INFO, b"")
    if len(data) < 9:
        raise DecodingError(f"SDR repository info of {len(data)} bytes, 14 expected")
    count, _free, added = struct.unpack_from("<HHI", data, 1)
    return count, added


def read_records(raw: Raw) -> list[bytes]:
    """Every record of the repository, header included, in repository order."""
    records: list[bytes] = []
    reader = _Reader(raw)
    record_id = 0
    for _ in range(MAX_RECORDS):
        next_id, record = reader.record(record_id)
        records.append(record)
        if next_id == LAST_RECORD:
            return records
        record_id = next_id
    raise DecodingError(f"the SDR repository does not end after {MAX_RECORDS} records")


class _Reader:
    """Reads records whole while the BMC allows it, in chunks under a reservation after."""

    def __init__(self, raw: Raw) -> None:
        self.raw = raw
        self.whole = True
        self.reservation = 0
        self.chunk = CHUNK

    def _get(self, record_id: int, offset: int, count: int) -> tuple[int, bytes]:
        data = self.raw(NETFN_STORAGE, CMD_GET_SDR, struct.pack("<HHBB", self.reservation, record_id, offset, count))
        if len(data) < 2:
            raise DecodingError(f"Get SDR answer of {len(data)} bytes")
        return struct.unpack_from("<H", data)[0], data[2:]

    def record(self, record_id: int) -> tuple[int, bytes]:
        if self.whole:
            try:
                next_id, data = self._get(record_id, 0, ENTIRE_RECORD)
                if len(data) >= HEADER_LENGTH and len(data) == HEADER_LENGTH + data[4]:
                    return next_id, data
            except CompletionCodeError as exc:
                if exc.cc not in WHOLE_REFUSED:
                    raise
            self.whole = False  # refused or cut short: this BMC is read in chunks
        for _ in range(MAX_RESERVATIONS):
            if not self.reservation:
                self.reservation = struct.unpack_from("<H", self.raw(NETFN_STORAGE, CMD_RESERVE_SDR, b"") + b"\0\0")[0]
            try:
                return self._chunked(record_id)
            except CompletionCodeError as exc:
                if exc.cc != CC_RESERVATION_CANCELED:
                    raise
                self.reservation = 0  # the repository changed meanwhile: reserve again, re-read
        raise DecodingError("the SDR reservation was cancelled again and again")

    def _chunked(self, record_id: int) -> tuple[int, bytes]:
        next_id, data = self._get(record_id, 0, HEADER_LENGTH)
        if len(data) < HEADER_LENGTH:
            raise DecodingError(f"SDR record header of {len(data)} bytes")
        length = HEADER_LENGTH + data[4]
        while len(data) < length:
            count = min(self.chunk, length - len(data))
            try:
                next_id, part = self._get(record_id, len(data), count)
            except CompletionCodeError as exc:
                if exc.cc not in WHOLE_REFUSED or count <= 4:
                    raise
                self.chunk = count - 4  # shorter messages still, as python-ipmi's ReadLength
                continue
            if not part:
                raise DecodingError("empty SDR chunk")
            data += part
        return next_id, data[:length]
