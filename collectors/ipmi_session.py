"""IPMI 2.0 (RMCP+, "lanplus") sessions to one BMC, kept open between polls.

`BmcConnection` keeps one session per BMC (over `KilnRmcpPlus`, see ipmi_rmcpplus.py for the
cipher suite 17 fix), reads the SDR repository once (collectors/ipmi_sdr.py; checked against
Get SDR Repository Info whenever a session opens, dropped when a sensor disappears), reads the
BMC's device id and FRU in the poll after first contact and again once a day, and returns
plain readings (`PollResult`); `collectors/ipmi.py` makes samples of them.
"""

from __future__ import annotations

import functools
import math
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyipmi
from pyipmi.errors import CompletionCodeError, DecodingError, RetryError
from pyipmi.sdr import SDR_TYPE_FULL_SENSOR_RECORD, SdrCommon

from collectors.iana import manufacturer_label
from collectors.ipmi_rmcpplus import BMC_ADDRESS, KilnRmcpPlus
from collectors.ipmi_sdr import read_records, repository_stamp

# "try 17, then 3": the strongest suite BMCs commonly offer, then the one every BMC has
DEFAULT_CIPHER_SUITES = (17, 3)
# IPMI 2.0 section 6.12.15: a BMC drops a session after 60 s (+/- 3) without traffic; an
# older session is replaced before use instead of costing a timeout
SESSION_IDLE_LIMIT_S = 50.0
# the device id and FRU (firmware version, serials) change with a firmware update or a part
# swap: read in the poll after first contact (which stays as short as a cold start needs) and
# then once a day, not every cycle
FACTS_REFRESH_S = 86400.0
# distinct full sensor records kept for sharing between BMCs (a few hundred per BMC model)
SHARED_RECORDS = 16384
# full sensor record bytes 3 (record type) and 5 (sensor owner id)
RECORD_TYPE, SENSOR_OWNER = 3, 5
NETFN_CHASSIS, NETFN_APP, NETFN_SENSOR, NETFN_DCMI = 0x00, 0x06, 0x04, 0x2C
CMD_CHASSIS_STATUS, CMD_SENSOR_READING, CMD_POWER_READING = 0x01, 0x2D, 0x02
CMD_DEVICE_ID, CMD_SYSTEM_INFO = 0x01, 0x59
# Get System Info Parameters (IPMI 2.0 section 22.14b): the strings ipmi_exporter puts in
# ipmi_bmc_info (FreeIPMI's bmc-info reads parameters 1 and 6), "N/A" where a BMC has none
SYSTEM_FIRMWARE_VERSION, BMC_URL = 0x01, 0x06
NOT_AVAILABLE = "N/A"
DCMI_GROUP = 0xDC
CC_SENSOR_NOT_PRESENT = 0xCB
# sensor reading byte 2: bit 6 scanning enabled, bit 5 reading unavailable
SCANNING_ENABLED, READING_UNAVAILABLE = 0x40, 0x20
EVENT_READING_THRESHOLD = 0x01
DCMI_MEASUREMENT_ACTIVE = 0x40
# parts of a poll, named like ipmi_exporter's collectors (its `ipmi_up{collector=...}`)
PARTS = ("chassis", "dcmi", "ipmi", "bmc", "fru")
# errors that fail one part of a poll; anything else (no answer, session lost) fails the target
PART_ERRORS = (CompletionCodeError, DecodingError)
# Kiln's names (KILN_IPMI_PRIVILEGE, a node's ipmi_privilege) -> python-ipmi's
PRIVILEGES = {"user": "user", "operator": "operator", "admin": "administrator"}
CC_INSUFFICIENT_PRIVILEGE = 0xD4


@dataclass(frozen=True)
class SensorRecord:
    """What Kiln keeps of one full sensor record of the SDR repository."""

    record_id: int
    number: int
    lun: int
    name: str
    sensor_type: int
    unit: int  # IPMI 2.0 table 43-15 base unit code
    percentage: bool
    threshold_based: bool
    convert: Callable[[int], float] = field(compare=False, repr=False)


@dataclass(frozen=True)
class Reading:
    """One sensor reading: value in the record's unit (NaN when unavailable) and threshold
    comparison bits (lnc, lc, lnr, unc, uc, unr in bits 0-5; None when not threshold-based)."""

    record: SensorRecord
    value: float
    threshold_bits: int | None


@dataclass
class PollResult:
    """What one poll of a BMC read; `errors` names the parts (PARTS) that failed, and why."""

    power_on: bool | None = None
    watts: int | None = None
    readings: list[Reading] = field(default_factory=list)
    device: dict[str, str] | None = None
    fru: dict[str, str] | None = None
    errors: dict[str, str] = field(default_factory=dict)


def sensor_record(sdr: Any) -> SensorRecord:
    """Keep what a poll needs of a python-ipmi full sensor record."""
    name = sdr.device_id_string
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    # value = (M * raw + B * 10^K1) * 10^K2: a linear reading is a multiple of 10^min(K2, K1+K2)
    digits = max(0, -sdr.k2, -(sdr.k1 + sdr.k2)) if sdr.linearization == 0 else None

    def convert(raw: int) -> float:
        value = sdr.convert_sensor_raw_to_value(raw)
        return round(value, digits) if digits is not None else value

    return SensorRecord(
        record_id=sdr.id, number=sdr.number, lun=sdr.owner_lun, name=name.strip(),
        sensor_type=sdr.sensor_type_code, unit=sdr.units_2, percentage=bool(sdr.percentage),
        threshold_based=sdr.event_reading_type_code == EVENT_READING_THRESHOLD, convert=convert,
    )


@functools.lru_cache(maxsize=SHARED_RECORDS)
def shared_sensor_record(data: bytes) -> SensorRecord:
    """The SensorRecord of a full sensor record's bytes, one object for every BMC that serves
    the same bytes: a fleet's BMCs of one model do, and each record keeps python-ipmi's parsed
    record (~2.7 KB with its conversion) for its readings."""
    return sensor_record(SdrCommon.from_data(data))


def device_facts(data: bytes) -> dict[str, str]:
    """The `ipmi_bmc_info` labels of a Get Device ID answer (IPMI 2.0 section 20.1), written
    as FreeIPMI's bmc-info writes them and ipmi_exporter copies them: firmware revision
    "major.minor" with the BCD minor as two hex digits ("2.05"), the manufacturer as
    "Name (number)" (collectors/iana.py); Kiln adds the IPMI version, product and device id."""
    if len(data) < 11:
        raise DecodingError(f"Get Device ID answer of {len(data)} bytes, 11 expected")
    major, minor, version = data[2] & 0x7F, data[3], data[4]
    return {
        "firmware_revision": f"{major}.{minor:02x}",
        "manufacturer_id": manufacturer_label(int.from_bytes(data[6:9], "little") & 0x0FFFFF),
        "ipmi_version": f"{version & 0x0F}.{version >> 4}",
        "product_id": str(int.from_bytes(data[9:11], "little")),
        "device_id": str(data[0]),
    }


def _text(value: Any) -> str:
    text = str(value).strip() if value is not None else ""
    return text or "N/A"


class BmcConnection:
    """One BMC: its session (kept open between polls), its cached SDR and facts.

    Not thread-safe by itself: the collector holds `lock` around `poll`.
    """

    def __init__(self, host: str, port: int, username: str, password: str, *,
                 cipher_suites: tuple[int, ...], timeout: float, retries: int, privilege: str = "user",
                 facts_first: bool = False) -> None:
        """Nothing is sent until the first `poll`. `privilege`: user, operator or admin, the
        session's level (polling reads only, but some BMCs want more for DCMI). `facts_first`:
        read the device id and FRU in the first poll too (a one-off collection has no next)."""
        if privilege not in PRIVILEGES:
            raise ValueError(f"privilege must be one of {', '.join(PRIVILEGES)}, not {privilege!r}")
        self.host, self.port, self.privilege = host, port, privilege
        self._username, self._password = username, password
        self.cipher_suites, self.timeout, self.retries = tuple(cipher_suites), timeout, retries
        self.lock = threading.Lock()
        self.cipher_suite: int | None = None  # the suite that worked; tried first next time
        self.sessions_opened = 0
        self.sdr_reads = 0
        self._packets_closed = 0  # packets sent on sessions closed since
        self._intf: KilnRmcpPlus | None = None
        self._ipmi: Any = None
        self._last_used = 0.0
        self._sdr_stamp: tuple[int, int] | None = None
        self._sensors: list[SensorRecord] | None = None
        self._device: dict[str, str] | None = None
        self._fru: dict[str, str] | None = None
        self._facts_read_at: float | None = None
        self._answered = False  # a poll of this BMC succeeded before: this is not first contact
        self.facts_first = facts_first

    # ----- session ----------------------------------------------------------------------

    def _open(self) -> None:
        order = self.cipher_suites
        if self.cipher_suite in order:
            order = (self.cipher_suite,) + tuple(s for s in order if s != self.cipher_suite)
        intf = KilnRmcpPlus(order, self.retries)
        ipmi = pyipmi.create_connection(intf)
        ipmi.session.set_session_type_rmcp(self.host, self.port)
        ipmi.session.set_auth_type_user(self._username, self._password)
        ipmi.session.set_priv_level(PRIVILEGES[self.privilege])
        ipmi.target = pyipmi.Target(ipmb_address=BMC_ADDRESS)
        intf.open()
        intf.set_timeout(self.timeout)
        try:
            intf.establish(ipmi.session)
        except BaseException:
            intf.close()
            self._packets_closed += intf.packets_sent
            raise
        self._intf, self._ipmi = intf, ipmi
        self.cipher_suite = intf.negotiated_suite
        self.sessions_opened += 1
        self._last_used = time.monotonic()

    @property
    def packets_sent(self) -> int:
        """Datagrams sent to this BMC so far (pings, session set-up, requests)."""
        return self._packets_closed + (self._intf.packets_sent if self._intf is not None else 0)

    def close(self) -> None:
        """Close the session (without waiting for the BMC) and its socket."""
        if self._intf is not None:
            self._intf.close_session_nowait()
            self._intf.close()
            self._packets_closed += self._intf.packets_sent
        self._intf = self._ipmi = None

    def _raw(self, netfn: int, cmd: int, data: bytes = b"", lun: int = 0) -> bytes:
        """Send one request; returns the response data after a good completion code."""
        assert self._intf is not None
        rsp = self._intf.request(netfn, cmd, data, lun)
        self._last_used = time.monotonic()
        if not rsp:
            raise DecodingError("empty response")
        if rsp[0] != 0:
            raise CompletionCodeError(rsp[0], cmd, netfn)
        return rsp[1:]

    # ----- poll -------------------------------------------------------------------------

    def poll(self) -> PollResult:
        """Read power state, DCMI watts and every sensor (the SDR on first contact; the device id
        and FRU in a later poll, see FACTS_REFRESH_S).

        A part answering with an error completion code is recorded in `errors`; no answer,
        a refused connection or failed authentication raise (and drop the session).
        """
        if self._intf is not None and time.monotonic() - self._last_used > SESSION_IDLE_LIMIT_S:
            self.close()
        result = PollResult()
        try:
            self._first_request(result)
            self._part(result, "dcmi", self._read_dcmi)
            if self._sensors is None:
                self._part(result, "ipmi", self._read_sdr)
            if self._sensors is not None:
                self._part(result, "ipmi", self._read_sensors)
            now = time.monotonic()
            due = self._facts_read_at is None or now - self._facts_read_at > FACTS_REFRESH_S
            if due and (self._answered or self.facts_first):
                self._part(result, "bmc", self._read_device_id)
                self._part(result, "fru", self._read_fru)
                if "bmc" not in result.errors and "fru" not in result.errors:
                    self._facts_read_at = now  # a refused read is tried again next poll
        except BaseException:
            self.close()
            raise
        self._answered = True
        result.device, result.fru = self._device, self._fru
        return result

    def _first_request(self, result: PollResult) -> None:
        """Chassis status, the first request: on a reused session one try, and if it goes
        unanswered while the BMC still answers a ping, the BMC lost the session (reset,
        expiry): open a new one. A BMC that answers nothing costs one timeout + the ping's."""
        if self._intf is None:
            self._open_checked()
            self._part(result, "chassis", self._read_chassis)
            return
        self._intf.max_retries = 0
        try:
            self._part(result, "chassis", self._read_chassis)
            return
        except (TimeoutError, RetryError):
            self._intf.ping()
        finally:
            if self._intf is not None:
                self._intf.max_retries = self.retries
        self.close()
        self._open_checked()
        self._part(result, "chassis", self._read_chassis)

    def _open_checked(self) -> None:
        """Open a session and drop the SDR cache if the repository changed meanwhile."""
        self._open()
        try:
            stamp = repository_stamp(self._raw)
        except PART_ERRORS:
            return
        if stamp != self._sdr_stamp:
            self._sensors, self._sdr_stamp = None, stamp

    def _part(self, result: PollResult, name: str, read: Callable[[PollResult], None]) -> None:
        try:
            read(result)
        except CompletionCodeError as exc:
            if exc.cc == CC_INSUFFICIENT_PRIVILEGE:
                result.errors[name] = (f"the BMC refuses it at the {self.privilege} privilege level: raise the "
                                       "node's ipmi_privilege or KILN_IPMI_PRIVILEGE (operator, admin)")
            else:
                result.errors[name] = f"the BMC refused it: {exc}"
        except DecodingError as exc:
            result.errors[name] = f"invalid answer: {exc}"

    def _read_chassis(self, result: PollResult) -> None:
        result.power_on = bool(self._raw(NETFN_CHASSIS, CMD_CHASSIS_STATUS)[0] & 0x01)

    def _read_dcmi(self, result: PollResult) -> None:
        data = self._raw(NETFN_DCMI, CMD_POWER_READING, bytes([DCMI_GROUP, 0x01, 0x00, 0x00]))
        if len(data) < 18:
            raise DecodingError(f"DCMI power reading of {len(data)} bytes, 18 expected")
        if data[0] != DCMI_GROUP:
            raise DecodingError(f"DCMI power reading with group extension 0x{data[0]:02x}, 0x{DCMI_GROUP:02x} expected")
        current = struct.unpack_from("<H", data, 1)[0]
        # no reading while the measurement is inactive (ipmi_exporter omits the metric too)
        result.watts = current if data[17] & DCMI_MEASUREMENT_ACTIVE else None

    def _read_sdr(self, result: PollResult) -> None:
        records = read_records(self._raw)
        self.sdr_reads += 1
        self._sensors = [shared_sensor_record(bytes(r)) for r in records if len(r) > SENSOR_OWNER
                         and r[RECORD_TYPE] == SDR_TYPE_FULL_SENSOR_RECORD and r[SENSOR_OWNER] == BMC_ADDRESS]

    def _read_sensors(self, result: PollResult) -> None:
        failed = []
        for record in self._sensors or ():
            try:
                data = self._raw(NETFN_SENSOR, CMD_SENSOR_READING, bytes([record.number]), record.lun)
            except CompletionCodeError as exc:
                if exc.cc == CC_SENSOR_NOT_PRESENT:
                    self._sensors = None  # the repository changed: read it again next poll
                failed.append(f"{record.name}: {exc}")
                continue
            value, bits = math.nan, None
            if len(data) >= 2 and data[1] & SCANNING_ENABLED and not data[1] & READING_UNAVAILABLE:
                value = record.convert(data[0])
                if record.threshold_based and len(data) >= 3:
                    bits = data[2] & 0x3F  # bits 6-7 are reserved (some BMCs set them)
            result.readings.append(Reading(record, value, bits))
        if failed and not result.readings:
            raise DecodingError("no sensor could be read: " + "; ".join(failed[:3]))

    def _read_device_id(self, result: PollResult) -> None:
        device = device_facts(self._raw(NETFN_APP, CMD_DEVICE_ID))
        device["system_firmware_version"] = self._system_info(SYSTEM_FIRMWARE_VERSION)
        device["bmc_url"] = self._system_info(BMC_URL)
        self._device = device

    def _system_info(self, parameter: int) -> str:
        """A string system info parameter: set 0 holds encoding, length and 14 bytes, the
        following sets 16 bytes each (as FreeIPMI reads them); N/A when the BMC refuses it."""
        try:
            first = self._raw(NETFN_APP, CMD_SYSTEM_INFO, bytes([0, parameter, 0, 0]))
            if len(first) < 4:
                return ""  # no string: FreeIPMI prints the prefix alone
            length, text = first[3], bytearray(first[4:18])
            for set_selector in range(1, 17):
                if len(text) >= length:
                    break
                text += self._raw(NETFN_APP, CMD_SYSTEM_INFO, bytes([0, parameter, set_selector, 0]))[2:18]
        except PART_ERRORS:
            return NOT_AVAILABLE
        return bytes(text[:length]).split(b"\0", 1)[0].decode("latin-1").strip()

    def _read_fru(self, result: PollResult) -> None:
        fru = self._ipmi.get_fru_inventory()
        board, product = fru.board_info_area, fru.product_info_area
        self._fru = {
            "product_manufacturer": _text(getattr(product, "manufacturer", None)),
            "product_name": _text(getattr(product, "name", None)),
            "product_part_number": _text(getattr(product, "part_number", None)),
            "product_serial": _text(getattr(product, "serial_number", None)),
            "board_manufacturer": _text(getattr(board, "manufacturer", None)),
            "board_product_name": _text(getattr(board, "product_name", None)),
            "board_serial": _text(getattr(board, "serial_number", None)),
            "asset_tag": _text(getattr(product, "asset_tag", None)),
        }
        self._last_used = time.monotonic()
