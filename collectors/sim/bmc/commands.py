"""IPMI command handlers of a simulated BMC: app, chassis, sensor/SDR, FRU, SEL and DCMI
(IPMI 2.0 and DCMI 1.5 request and response layouts). Mixed into ``protocol.BmcServer``,
which owns the sessions and the RMCP+ framing; each handler takes the session and the
request data and returns (completion code, response data)."""

from __future__ import annotations

import struct
import time

from . import model as M

# (auth, integrity, confidentiality) of the supported cipher suites
CIPHER_SUITES = {
    3: (1, 1, 1),     # RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128
    17: (3, 4, 1),    # RAKP-HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128
}

# IPMI completion codes
CC_OK = 0x00
CC_PARAM_NOT_SUPPORTED = 0x80
CC_INVALID_COMMAND = 0xC1
CC_OUT_OF_RANGE = 0xC9
CC_CANT_RETURN = 0xCA
CC_NOT_PRESENT = 0xCB
CC_INVALID_DATA = 0xCC
CC_INSUFFICIENT_PRIV = 0xD4

DCMI = 0xDC


class CommandHandlers:
    """The command handlers; the class using them provides ``bmc`` (the model), ``guid``,
    ``sessions`` and ``reservation``."""

    def command_table(self):
        """(netfn, cmd) -> handler for every command the simulated BMC answers."""
        return {
            (0x06, 0x01): self.get_device_id,
            (0x06, 0x04): lambda s, d: (CC_OK, b'\x55\x00'),   # self test ok
            (0x06, 0x08): lambda s, d: (CC_OK, self.guid),     # device GUID
            (0x06, 0x37): lambda s, d: (CC_OK, self.guid),     # system GUID
            (0x06, 0x38): self.get_channel_auth_cap,
            (0x06, 0x54): self.get_channel_cipher_suites,
            (0x06, 0x3B): self.set_session_priv,
            (0x06, 0x3C): self.close_session,
            (0x06, 0x59): self.get_system_info,
            (0x00, 0x00): lambda s, d: (CC_OK, b'\x00\x20\x20\x20\x20'),
            (0x00, 0x01): self.get_chassis_status,
            (0x00, 0x02): self.chassis_control,
            (0x00, 0x04): lambda s, d: (CC_OK, b''),           # identify
            (0x00, 0x08): self.set_boot_options,
            (0x00, 0x09): self.get_boot_options,
            (0x04, 0x25): lambda s, d: self._sensor_cc(d, b'\x00\x00'),
            (0x04, 0x27): self.get_sensor_thresholds,
            (0x04, 0x29): lambda s, d: self._sensor_cc(d, b'\xc0\x00\x00\x00\x00'),
            (0x04, 0x2D): self.get_sensor_reading,
            (0x04, 0x2F): self.get_sensor_type,
            (0x0A, 0x10): self.get_fru_area_info,
            (0x0A, 0x11): self.read_fru_data,
            (0x0A, 0x20): self.get_sdr_repo_info,
            (0x0A, 0x22): self.reserve_sdr_repo,
            (0x0A, 0x23): self.get_sdr,
            (0x0A, 0x40): self.get_sel_info,
            (0x0A, 0x48): lambda s, d: (CC_OK, struct.pack('<I', int(time.time()))),
            (0x2C, 0x01): self.dcmi_capabilities,
            (0x2C, 0x02): self.dcmi_power_reading,
            (0x2C, 0x03): self.dcmi_get_power_limit,
            (0x2C, 0x06): self.dcmi_asset_tag,
            (0x2C, 0x07): self.dcmi_sensor_info,
            (0x2C, 0x09): self.dcmi_mc_id,
            (0x2C, 0x10): self.dcmi_temperature,
        }

    def get_device_id(self, s, d):
        return CC_OK, self.bmc.device_id_bytes()

    def get_system_info(self, s, d):
        """Get System Info Parameters (IPMI 2.0 section 22.14b): parameter 1, the system
        firmware version, as set 0 (encoding ASCII, length, 14 bytes) and 16-byte sets after."""
        if len(d) < 4:
            return CC_INVALID_DATA, b''
        revision = b'\x11'
        if d[0] & 0x80:                     # parameter revision only
            return CC_OK, revision
        if d[1] != 0x01:
            return CC_PARAM_NOT_SUPPORTED, b''
        text, selector = M.SYSTEM_FIRMWARE_VERSION.encode(), d[2]
        if selector == 0:
            return CC_OK, revision + bytes([0, 0, len(text)]) + text[:14].ljust(14, b'\0')
        block = text[14 + 16 * (selector - 1):14 + 16 * selector]
        if not block:
            return CC_OUT_OF_RANGE, b''
        return CC_OK, revision + bytes([selector]) + block.ljust(16, b'\0')

    def get_channel_auth_cap(self, s, d):
        channel = d[0] & 0x0F
        if channel not in (0x0E, 0x01):
            return CC_INVALID_DATA, b''
        # channel 1; IPMI 2.0 extended capabilities; non-null user names;
        # IPMI 2.0 connections supported; no OEM
        return CC_OK, bytes([0x01, 0x80, 0x04, 0x02, 0, 0, 0, 0])

    def get_channel_cipher_suites(self, s, d):
        index = d[2] & 0x3F
        records = b''
        for sid in self.bmc.cipher_suites:
            auth, integ, conf = CIPHER_SUITES[sid]
            records += bytes([0xC0, sid, auth, 0x40 | integ, 0x80 | conf])
        return CC_OK, bytes([0x01]) + records[16 * index:16 * index + 16]

    def set_session_priv(self, s, d):
        level = d[0] & 0x0F
        if level == 0:
            return CC_OK, bytes([s.priv])
        if level > s.max_priv or level > 4:
            return 0x81, b''
        s.priv = level
        return CC_OK, bytes([level])

    def close_session(self, s, d):
        sid = struct.unpack('<I', d[:4])[0]
        if sid not in self.sessions:
            return 0x87, b''     # invalid session ID in request
        return CC_OK, b''

    # ------------------------------------------------------------------
    # Chassis

    def get_chassis_status(self, s, d):
        # power restore policy "previous state" (01b), chassis identify
        # state reported (off)
        return CC_OK, bytes([(0x20 | int(self.bmc.power_on)),
                             0x10 if self.bmc.power_events else 0x00,
                             0x40, 0x00])

    def chassis_control(self, s, d):
        if s.priv < 3:
            return CC_INSUFFICIENT_PRIV, b''
        action = d[0] & 0x0F
        if action in (0x00, 0x05):            # power down, soft shutdown
            self.bmc.power_on = False
        elif action in (0x01, 0x02, 0x03):    # power up, cycle, hard reset
            if action == 0x03 and not self.bmc.power_on:
                return 0xD5, b''              # cannot reset while off
            self.bmc.power_on = True
        elif action == 0x04:                  # diagnostic interrupt
            pass
        else:
            return CC_INVALID_DATA, b''
        self.bmc.power_events += 1
        return CC_OK, b''

    def set_boot_options(self, s, d):
        param = d[0] & 0x7F
        self.bmc.boot_params[param] = bytes(d[1:])
        return CC_OK, b''

    def get_boot_options(self, s, d):
        param = d[0] & 0x7F
        defaults = {0: b'\x00', 3: b'\x00', 4: b'\x00', 5: bytes(5),
                    6: bytes(9)}
        if param not in defaults and param not in self.bmc.boot_params:
            return CC_PARAM_NOT_SUPPORTED, b''
        value = self.bmc.boot_params.get(param, defaults.get(param))
        return CC_OK, bytes([0x01, param]) + value

    # ------------------------------------------------------------------
    # Sensors

    def _sensor_cc(self, d, data):
        if d[0] not in M.SENSORS_BY_NUMBER:
            return CC_NOT_PRESENT, b''
        return CC_OK, data

    def get_sensor_reading(self, s, d):
        number = d[0]
        if number not in M.SENSORS_BY_NUMBER:
            return CC_NOT_PRESENT, b''
        raw, bits = self.bmc.sensor_reading(number)
        # events and scanning enabled
        return CC_OK, bytes([raw, 0xC0, bits, 0x80])

    def get_sensor_thresholds(self, s, d):
        number = d[0]
        if number not in M.SENSORS_BY_NUMBER:
            return CC_NOT_PRESENT, b''
        t = self.bmc.raw_thresholds[number]
        mask = 0
        for bit, name in enumerate(M.THRESHOLDS):
            if name in t:
                mask |= 1 << bit
        return CC_OK, bytes([mask] + [t.get(n, 0) for n in M.THRESHOLDS])

    def get_sensor_type(self, s, d):
        spec = M.SENSORS_BY_NUMBER.get(d[0])
        if spec is None:
            return CC_NOT_PRESENT, b''
        return CC_OK, bytes([spec.sensor_type, 0x01])

    # ------------------------------------------------------------------
    # Storage: FRU, SDR repository, SEL

    def get_fru_area_info(self, s, d):
        if d[0] != 0:
            return CC_NOT_PRESENT, b''
        return CC_OK, struct.pack('<HB', len(self.bmc.fru), 0)

    def read_fru_data(self, s, d):
        fru_id, offset, count = struct.unpack('<BHB', d[:4])
        if fru_id != 0:
            return CC_NOT_PRESENT, b''
        fru = self.bmc.fru
        if offset >= len(fru):
            return CC_OUT_OF_RANGE, b''
        chunk = fru[offset:offset + count]
        return CC_OK, bytes([len(chunk)]) + chunk

    def get_sdr_repo_info(self, s, d):
        return CC_OK, struct.pack('<BHHIIB', 0x51, len(self.bmc.sdr_records),
                                  0xFFFF, 0, 0, 0x02)

    def reserve_sdr_repo(self, s, d):
        self.reservation = (self.reservation % 0xFFFF) + 1
        return CC_OK, struct.pack('<H', self.reservation)

    def get_sdr(self, s, d):
        _res, record_id, offset, count = struct.unpack('<HHBB', d[:6])
        records = self.bmc.sdr_records
        index = 0 if record_id == 0 else record_id - 1
        if not 0 <= index < len(records):
            return CC_NOT_PRESENT, b''
        rec = records[index]
        next_id = index + 2 if index + 1 < len(records) else 0xFFFF
        if offset > len(rec):
            return CC_OUT_OF_RANGE, b''
        end = len(rec) if count == 0xFF else offset + count
        if end > len(rec):
            return CC_CANT_RETURN, b''
        return CC_OK, struct.pack('<H', next_id) + rec[offset:end]

    def get_sel_info(self, s, d):
        return CC_OK, struct.pack('<BHHIIB', 0x51, 0, 0xFFFF,
                                  0xFFFFFFFF, 0xFFFFFFFF, 0x02)

    # ------------------------------------------------------------------
    # DCMI 1.5 (group extension 0xDC)

    def _dcmi(self, d):
        if not d or d[0] != DCMI:
            raise ValueError('not DCMI')

    def dcmi_capabilities(self, s, d):
        self._dcmi(d)
        param = d[1]
        data = {
            1: bytes([0x00, 0x01, 0x00]),        # power management
            2: bytes([0x00, 0x00, 0x05, 0x03, 0x01]),  # asset tag+GUID; inlet+CPU temps
            3: bytes([0x20, 0x00]),
            4: bytes([0x01, 0xFF, 0xFF]),        # primary LAN channel 1
            5: bytes([0x00]),
        }.get(param)
        if data is None:
            return CC_PARAM_NOT_SUPPORTED, b''
        return CC_OK, bytes([DCMI, 1, 5, 2]) + data

    def dcmi_power_reading(self, s, d):
        self._dcmi(d)
        mode = d[1]
        if mode not in (0x01, 0x02):
            return CC_INVALID_DATA, b''
        cur, mn, mx, avg = self.bmc.dcmi_reading()
        return CC_OK, struct.pack('<BHHHHIIB', DCMI, cur, mn, mx, avg,
                                  int(time.time()), M.SAMPLING_PERIOD_MS,
                                  0x40)     # power measurement active

    def dcmi_get_power_limit(self, s, d):
        self._dcmi(d)
        return 0x80, bytes([DCMI])          # no active set power limit

    def _dcmi_string(self, d, text):
        offset, count = d[1], min(d[2], 16)
        data = text.encode()
        return CC_OK, bytes([DCMI, len(data)]) + data[offset:offset + count]

    def dcmi_asset_tag(self, s, d):
        self._dcmi(d)
        return self._dcmi_string(d, self.bmc.fru_fields()['asset_tag'])

    def dcmi_mc_id(self, s, d):
        self._dcmi(d)
        return self._dcmi_string(d, self.bmc.name)

    _DCMI_ENTITIES = {0x40: 0x37, 0x37: 0x37, 0x41: 0x03, 0x03: 0x03,
                      0x42: 0x07, 0x07: 0x07}

    def _dcmi_temps(self, d):
        if d[1] != 0x01:
            raise ValueError('only temperature sensors')
        entity = self._DCMI_ENTITIES.get(d[2])
        if entity is None:
            raise ValueError('entity')
        return [(spec, record_id) for record_id, spec
                in enumerate(M.SENSORS, start=1)
                if spec.entity_id == entity and spec.sensor_type == 0x01]

    def dcmi_sensor_info(self, s, d):
        self._dcmi(d)
        found = self._dcmi_temps(d)
        start = max(d[4], 1) if len(d) > 4 else 1
        if d[3]:
            found = [f for f in found if f[0].entity_instance == d[3]]
        else:
            found = [f for f in found if f[0].entity_instance >= start][:8]
        ids = b''.join(struct.pack('<H', rid) for _, rid in found)
        return CC_OK, bytes([DCMI, len(found), len(found)]) + ids

    def dcmi_temperature(self, s, d):
        self._dcmi(d)
        found = self._dcmi_temps(d)
        total = len(found)
        start = max(d[4], 1) if len(d) > 4 else 1
        if d[3]:
            found = [f for f in found if f[0].entity_instance == d[3]]
        else:
            found = [f for f in found if f[0].entity_instance >= start][:8]
        out = bytes([DCMI, total, len(found)])
        for spec, _ in found:
            value = spec.to_value(self.bmc.sensor_raw(spec.number))
            out += bytes([int(value) & 0x7F, spec.entity_instance])
        return CC_OK, out
