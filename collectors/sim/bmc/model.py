"""Deterministic data of one simulated BMC.

Everything a BMC serves is derived from ``(seed, index)`` with SHA-256, so
the launcher (which writes the expected values into bmcs.json) and the
worker process (which serves them) agree without sharing state, and the
values are stable across Python versions.

Sensor readings are linear IPMI full sensor records (IPMI 2.0, section
43.1): ``value = M * raw * 10**R`` (B = 0), chosen so that every served
value is exact in decimal: temperatures 1 degree C steps, fans 100 RPM steps,
12V in 0.06 V steps, PSU input power in 20 W steps.
"""

from __future__ import annotations

import datetime
import hashlib
import struct
import uuid

# IPMI 2.0 table 43-15 sensor unit type codes
UNIT_NAMES = {1: 'degrees C', 4: 'Volts', 6: 'Watts', 18: 'RPM'}
# IPMI 2.0 table 42-3 sensor type codes
SENSOR_TYPE_NAMES = {0x01: 'temperature', 0x02: 'voltage', 0x04: 'fan',
                     0x08: 'power_supply'}

# threshold names in the order of the Get Sensor Thresholds response and of
# the readable-threshold mask bits 0..5
THRESHOLDS = ('lnc', 'lc', 'lnr', 'unc', 'uc', 'unr')

STANDBY_WATTS = 40           # DCMI reading while the chassis is off
WATTS_STEP = 40              # DCMI watts resolution: each PSU sensor reads half, in 20 W steps
MAX_WATTS = 10200            # two PSU sensors of at most 255 * 20 W
SAMPLING_PERIOD_MS = 1000    # DCMI statistics reporting time period
MANUFACTURER = 'Kiln Simulated Systems'
MANUFACTURER_ID = 0          # IANA enterprise number served by Get Device ID
PRODUCT_ID = 0x0608
FIRMWARE = (1, 0x23)         # 1.23 (minor is BCD)
# Get System Info Parameters 1 (system firmware version), longer than one 14-byte set;
# parameter 6 (BMC URL) is not served
SYSTEM_FIRMWARE_VERSION = '2.19.1 (2024-03-01)'
BOARD_MFG_DATE = datetime.datetime(2024, 3, 1, tzinfo=datetime.timezone.utc)
GUID_NAMESPACE = uuid.UUID('6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9')


class SensorSpec:
    """A threshold-based analog sensor (one full sensor record)."""

    def __init__(self, number, name, sensor_type, entity_id, entity_instance,
                 unit, m, r_exp, thresholds):
        self.number = number
        self.name = name
        self.sensor_type = sensor_type
        self.entity_id = entity_id
        self.entity_instance = entity_instance
        self.unit = unit
        self.m = m
        self.r_exp = r_exp
        self.thresholds = thresholds      # name -> value in sensor units

    def to_raw(self, value):
        raw = round(value / (self.m * 10.0 ** self.r_exp))
        if not 0 <= raw <= 255:
            raise ValueError('%s: %r out of range' % (self.name, value))
        return raw

    def to_value(self, raw):
        # round to the resolution so 6 * 200 * 0.01 is 12.0, not 12.000...02
        digits = max(0, -self.r_exp)
        value = round(self.m * raw * 10.0 ** self.r_exp, digits)
        return int(value) if digits == 0 else value

    def raw_thresholds(self):
        return {k: self.to_raw(v) for k, v in self.thresholds.items()}


# sensor number, name, type, entity id, instance, unit, M, R exponent,
# thresholds (sensor units)
SENSORS = [
    SensorSpec(0x01, 'CPU1 Temp', 0x01, 0x03, 1, 1, 1, 0,
               {'unc': 85, 'uc': 95, 'unr': 100}),
    SensorSpec(0x02, 'CPU2 Temp', 0x01, 0x03, 2, 1, 1, 0,
               {'unc': 85, 'uc': 95, 'unr': 100}),
    SensorSpec(0x03, 'Inlet Temp', 0x01, 0x37, 1, 1, 1, 0,
               {'unc': 38, 'uc': 42, 'unr': 45}),
    SensorSpec(0x04, 'GPU1 Temp', 0x01, 0x0B, 1, 1, 1, 0,
               {'unc': 85, 'uc': 90, 'unr': 95}),
    SensorSpec(0x05, 'GPU2 Temp', 0x01, 0x0B, 2, 1, 1, 0,
               {'unc': 85, 'uc': 90, 'unr': 95}),
    SensorSpec(0x10, 'FAN1', 0x04, 0x1D, 1, 18, 100, 0,
               {'lnr': 300, 'lc': 500, 'lnc': 800}),
    SensorSpec(0x11, 'FAN2', 0x04, 0x1D, 2, 18, 100, 0,
               {'lnr': 300, 'lc': 500, 'lnc': 800}),
    SensorSpec(0x20, '12V', 0x02, 0x07, 1, 4, 6, -2,
               {'lnr': 10.2, 'lc': 10.8, 'lnc': 11.4,
                'unc': 12.6, 'uc': 13.2, 'unr': 13.8}),
    # 20 W steps up to 5,100 W: an 8-GPU server at full load draws 6-7 kW over its two PSUs
    SensorSpec(0x30, 'PSU1 Input Power', 0x08, 0x0A, 1, 6, 20, 0,
               {'unc': 4000, 'uc': 4400, 'unr': 4800}),
    SensorSpec(0x31, 'PSU2 Input Power', 0x08, 0x0A, 2, 6, 20, 0,
               {'unc': 4000, 'uc': 4400, 'unr': 4800}),
]
SENSORS_BY_NUMBER = {s.number: s for s in SENSORS}
SENSORS_BY_NAME = {s.name: s for s in SENSORS}
CRITICAL_SENSOR = 'GPU2 Temp'
CRITICAL_VALUE = 92          # >= uc (90), < unr (95): ipmitool shows "cr"
PSU_SENSORS = ('PSU1 Input Power', 'PSU2 Input Power')


def _h(seed, index, key, modulo):
    digest = hashlib.sha256(('%s:%s:%s' % (seed, index, key)).encode()).digest()
    return int.from_bytes(digest[:8], 'big') % modulo


def threshold_status(raw, raw_thresholds):
    """Threshold comparison status bits of Get Sensor Reading byte 3."""
    bits = 0
    for bit, name in enumerate(THRESHOLDS):
        t = raw_thresholds.get(name)
        if t is None:
            continue
        if bit < 3 and raw <= t:
            bits |= 1 << bit
        elif bit >= 3 and raw >= t:
            bits |= 1 << bit
    return bits


def status_name(bits):
    """ipmitool's short status: ok, nc, cr or nr."""
    if bits & 0x24:
        return 'nr'
    if bits & 0x12:
        return 'cr'
    if bits & 0x09:
        return 'nc'
    return 'ok'


def _tl(text):
    data = text.encode('latin-1')[:63]
    return bytes([0xC0 | len(data)]) + data


def _fru_area(body):
    data = bytearray(body) + b'\xc1'
    while (len(data) + 1) % 8:
        data.append(0)
    data[1] = (len(data) + 1) // 8
    data.append((-sum(data)) & 0xFF)
    return bytes(data)


class BmcModel:
    """State and data of one simulated BMC.

    Mutable at runtime (from the control port or IPMI): ``power_on``,
    ``fault`` ('normal', 'freeze', 'authfail'), ``raw`` (sensor number ->
    raw reading while powered on), ``watts`` and the boot parameters.
    """

    def __init__(self, index, name=None, username='admin',
                 password='password', seed=0, critical=False,
                 power_on=True, cipher_suites=(3, 17), dcmi_privilege=2):
        self.index = index
        self.name = name or 'bmc-%04d' % index
        self.username = username
        self.password = password
        self.seed = seed
        self.critical = critical
        self.power_on = power_on
        self.cipher_suites = tuple(cipher_suites)
        # the session privilege DCMI commands need: 2 user, 3 operator, 4 administrator
        self.dcmi_privilege = dcmi_privilege
        self.fault = 'normal'
        self.guid = uuid.uuid5(GUID_NAMESPACE, '%s:%s' % (seed, self.name))
        self.boot_params = {}
        self.power_events = 0

        h = lambda key, mod: _h(seed, index, key, mod)  # noqa: E731
        # total DCMI watts while on: 1800..4400 W in 40 W steps, so that
        # each PSU carries exactly half in 20 W steps
        self.watts = 1800 + WATTS_STEP * h('watts', 66)
        values = {
            'CPU1 Temp': 40 + h('cpu1', 30),
            'CPU2 Temp': 40 + h('cpu2', 30),
            'Inlet Temp': 18 + h('inlet', 10),
            'GPU1 Temp': 45 + h('gpu1', 35),
            'GPU2 Temp': 45 + h('gpu2', 35),
            'FAN1': 6000 + 100 * h('fan1', 40),
            'FAN2': 6000 + 100 * h('fan2', 40),
            '12V': round(11.88 + 0.06 * h('12v', 5), 2),
        }
        if critical:
            values[CRITICAL_SENSOR] = CRITICAL_VALUE
        self.raw = {}
        for spec in SENSORS:
            if spec.name in PSU_SENSORS:
                continue
            self.raw[spec.number] = spec.to_raw(values[spec.name])
        self.raw_thresholds = {s.number: s.raw_thresholds() for s in SENSORS}
        self.sdr_records = self._build_sdrs()
        self.fru = self._build_fru()

    # ----- readings -------------------------------------------------------

    def dcmi_reading(self):
        """(current, minimum, maximum, average) watts, DCMI Get Power Reading."""
        if not self.power_on:
            w = STANDBY_WATTS
            return (w, w, w, w)
        w = self.watts
        return (w, w - 120, w + 180, w - 20)

    def sensor_raw(self, number):
        spec = SENSORS_BY_NUMBER[number]
        if spec.name in PSU_SENSORS:
            total = self.watts if self.power_on else STANDBY_WATTS
            return spec.to_raw(total // 2)
        return self.raw[number]

    def set_sensor_value(self, name, value):
        spec = SENSORS_BY_NAME[name]
        if spec.name in PSU_SENSORS:
            raise ValueError('PSU input power follows the DCMI watts; '
                             'set watts instead')
        self.raw[spec.number] = spec.to_raw(value)

    def sensor_reading(self, number):
        """(raw, threshold status bits) of Get Sensor Reading."""
        raw = self.sensor_raw(number)
        return raw, threshold_status(raw, self.raw_thresholds[number])

    # ----- static records ------------------------------------------------

    def _build_sdrs(self):
        records = []
        for record_id, spec in enumerate(SENSORS, start=1):
            lower = [t for t in ('lnc', 'lc', 'lnr') if t in spec.thresholds]
            upper = [t for t in ('unc', 'uc', 'unr') if t in spec.thresholds]
            readable = 0
            for bit, name in enumerate(THRESHOLDS):
                if name in spec.thresholds:
                    readable |= 1 << bit
            # assertion / deassertion event masks with the lower / upper
            # threshold reading masks in bits 12..14
            lower_mask = sum(1 << (12 + ('lnc', 'lc', 'lnr').index(t))
                             for t in lower)
            upper_mask = sum(1 << (12 + ('unc', 'uc', 'unr').index(t))
                             for t in upper)
            raw_t = spec.raw_thresholds()
            name = spec.name.encode('ascii')[:16]
            r_exp = spec.r_exp & 0x0F
            body = bytes([
                0x20, 0x00, spec.number,               # owner, LUN, number
                spec.entity_id, spec.entity_instance,
                0x7F,                                   # initialization
                0x44,                                   # auto re-arm, thresholds readable
                spec.sensor_type, 0x01,                 # threshold based
            ])
            body += struct.pack('<HHBB', lower_mask, upper_mask, readable, 0)
            body += bytes([
                0x00, spec.unit, 0x00,                  # unsigned, unit
                0x00,                                   # linear
                spec.m & 0xFF, (spec.m >> 2) & 0xC0,    # M, tolerance
                0x00, 0x00,                             # B, accuracy
                0x00,                                   # accuracy, direction
                (r_exp << 4) | 0x0,                     # R exp, B exp
                0x00,                                   # analog flags
                0x00, 0x00, 0x00,                       # nominal, max, min
                0xFF, 0x00,                             # sensor max, min
                raw_t.get('unr', 0), raw_t.get('uc', 0), raw_t.get('unc', 0),
                raw_t.get('lnr', 0), raw_t.get('lc', 0), raw_t.get('lnc', 0),
                0x00, 0x00,                             # hysteresis
                0x00, 0x00, 0x00,                       # reserved, OEM
                0xC0 | len(name),
            ]) + name
            header = struct.pack('<HBBB', record_id, 0x51, 0x01, len(body))
            records.append(header + body)
        return records

    def fru_fields(self):
        i = self.index
        return {
            'chassis_type': 23,                    # rack mount chassis
            'chassis_part_number': 'KS-CH-4U',
            'chassis_serial': 'CSN%06d' % i,
            'board_mfg_date': BOARD_MFG_DATE.strftime('%Y-%m-%dT%H:%M:%SZ'),
            'board_manufacturer': MANUFACTURER,
            'board_product': 'KS-G8 Mainboard',
            'board_serial': 'BSN%06d' % i,
            'board_part_number': 'KS-MB-0100',
            'product_manufacturer': MANUFACTURER,
            'product_name': 'KS-G8 GPU Server',
            'product_part_number': 'KS-G8-8GPU',
            'product_version': 'A1',
            'product_serial': 'KSN%06d' % i,
            'asset_tag': 'ASSET-%06d' % i,
        }

    def _build_fru(self):
        f = self.fru_fields()
        minutes = int((BOARD_MFG_DATE - datetime.datetime(
            1996, 1, 1, tzinfo=datetime.timezone.utc)).total_seconds() // 60)
        chassis = _fru_area(bytes([1, 0, f['chassis_type']])
                            + _tl(f['chassis_part_number'])
                            + _tl(f['chassis_serial']))
        board = _fru_area(bytes([1, 0, 0]) + minutes.to_bytes(3, 'little')
                          + _tl(f['board_manufacturer'])
                          + _tl(f['board_product'])
                          + _tl(f['board_serial'])
                          + _tl(f['board_part_number'])
                          + _tl('bmcsim'))
        product = _fru_area(bytes([1, 0, 0])
                            + _tl(f['product_manufacturer'])
                            + _tl(f['product_name'])
                            + _tl(f['product_part_number'])
                            + _tl(f['product_version'])
                            + _tl(f['product_serial'])
                            + _tl(f['asset_tag'])
                            + _tl('bmcsim'))
        off_c = 8
        off_b = off_c + len(chassis)
        off_p = off_b + len(board)
        header = bytearray([1, 0, off_c // 8, off_b // 8, off_p // 8, 0, 0])
        header.append((-sum(header)) & 0xFF)
        return bytes(header) + chassis + board + product

    def device_id_bytes(self):
        """Get Device ID response data (IPMI 2.0 section 20.1)."""
        return bytes([
            0x20,                 # device ID
            0x01,                 # revision 1, no device SDRs
            FIRMWARE[0], FIRMWARE[1],
            0x02,                 # IPMI 2.0
            0x8B,                 # chassis, FRU inventory, SDR repository, sensor
        ]) + MANUFACTURER_ID.to_bytes(3, 'little') \
            + PRODUCT_ID.to_bytes(2, 'little') + bytes([0, 0, 0, 0])

    # ----- expected values (bmcs.json) -----------------------------------

    def expected(self):
        sensors = []
        for spec in SENSORS:
            raw, bits = self.sensor_reading(spec.number)
            sensors.append({
                'number': spec.number,
                'name': spec.name,
                'type': SENSOR_TYPE_NAMES[spec.sensor_type],
                'unit': UNIT_NAMES[spec.unit],
                'entity_id': spec.entity_id,
                'entity_instance': spec.entity_instance,
                'raw': raw,
                'value': spec.to_value(raw),
                'status': status_name(bits),
                'threshold_bits': bits,
                'thresholds': dict(spec.thresholds),
            })
        cur, mn, mx, avg = self.dcmi_reading()
        off = STANDBY_WATTS
        psu_off = SENSORS_BY_NAME['PSU1 Input Power'].to_value(
            SENSORS_BY_NAME['PSU1 Input Power'].to_raw(off // 2))
        return {
            'power_state': 'on' if self.power_on else 'off',
            'dcmi': {'current_watts': cur, 'min_watts': mn,
                     'max_watts': mx, 'avg_watts': avg,
                     'sampling_period_ms': SAMPLING_PERIOD_MS},
            'dcmi_when_on': {'current_watts': self.watts,
                             'min_watts': self.watts - 120,
                             'max_watts': self.watts + 180,
                             'avg_watts': self.watts - 20},
            'dcmi_when_off': {'current_watts': off, 'min_watts': off,
                              'max_watts': off, 'avg_watts': off},
            'sensors': sensors,
            'sensors_when_off': {name: psu_off for name in PSU_SENSORS},
            'critical_sensors': [s['name'] for s in sensors
                                 if s['status'] in ('cr', 'nr')],
            'fru': self.fru_fields(),
            'device_id': {
                'device_id': 0x20, 'device_revision': 1,
                'firmware': '%d.%02x' % FIRMWARE, 'ipmi_version': '2.0',
                'manufacturer_id': MANUFACTURER_ID, 'product_id': PRODUCT_ID,
                'system_firmware_version': SYSTEM_FIRMWARE_VERSION,
            },
            'guid': str(self.guid),
        }
