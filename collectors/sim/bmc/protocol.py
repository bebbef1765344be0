"""Server side of IPMI over LAN: RMCP, ASF presence ping, RMCP+ sessions.

Implements what a BMC needs for ``ipmitool -I lanplus`` and python-ipmi's
``rmcpplus`` interface (IPMI 2.0 sections 13.x and 22.x):

- RMCP/ASF presence ping -> pong
- pre-session IPMI 1.5 (or 2.0, session ID 0) Get Channel Authentication
  Capabilities and Get Channel Cipher Suites
- Open Session Request/Response, RAKP 1-4 with RAKP-HMAC-SHA1 (cipher
  suite 3: HMAC-SHA1-96, AES-CBC-128) and RAKP-HMAC-SHA256 (cipher suite
  17: HMAC-SHA256-128, AES-CBC-128)
- authenticated, encrypted session messages dispatched to the IPMI command
  handlers (chassis, sensor/SDR, FRU, DCMI, app; in ``commands``)

Wrong password behaves like a real BMC: the BMC's RAKP 2 key exchange
code is computed with its own password, the console finds it invalid
(python-ipmi: AuthenticationError; ipmitool: "RAKP 2 HMAC is invalid").
An unknown user name gets RAKP 2 status 0x0D (unauthorized name).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import model as M
from .commands import (
    CC_INSUFFICIENT_PRIV,
    CC_INVALID_COMMAND,
    CC_INVALID_DATA,
    CC_OK,
    CIPHER_SUITES,
    CommandHandlers,
)

RMCP_CLASS_ASF = 0x06
RMCP_CLASS_IPMI = 0x07
ASF_IANA = 4542

AUTH_HASH = {1: (hashlib.sha1, 12), 3: (hashlib.sha256, 16)}
INTEGRITY = {1: ('sha1', 12), 4: ('sha256', 16)}

MAX_SESSIONS = 64            # per BMC, least recently used are dropped
SESSION_TIMEOUT = 60.0       # seconds of inactivity

# RMCP+ status codes (IPMI 2.0 table 13-15)
MSC_INVALID_SESSION_ID = 0x02
MSC_INVALID_ROLE = 0x09
MSC_UNAUTHORIZED_NAME = 0x0D
MSC_INVALID_INTEGRITY_CHECK = 0x0F
MSC_NO_CIPHER_SUITE_MATCH = 0x11



def _checksum(data):
    return (-sum(data)) & 0xFF


class Session:
    __slots__ = ('managed_id', 'console_id', 'suite', 'priv', 'max_priv',
                 'rm', 'rc', 'role', 'uname', 'kuid', 'k1', 'ecb_enc',
                 'ecb_dec', 'ihash', 'ilen', 'established', 'last', 'out_seq',
                 'rakp2', 'rakp3', 'rakp4')

    def __init__(self, managed_id, console_id, suite, max_priv):
        self.managed_id = managed_id
        self.console_id = console_id
        self.suite = suite
        self.max_priv = max_priv
        self.priv = 2
        self.established = False
        self.last = time.monotonic()
        self.out_seq = 0
        self.rm = self.rc = self.uname = self.kuid = None
        self.role = 0
        self.k1 = self.ecb_enc = self.ecb_dec = None
        self.rakp2 = self.rakp3 = self.rakp4 = None   # for retransmissions

    # AES-CBC-128 on top of cached AES-ECB contexts: creating a CBC context
    # per packet costs ~25 us, this ~2-5 us
    def decrypt(self, data):
        ct = data[16:]
        pt = self.ecb_dec.update(ct)
        return (int.from_bytes(pt, 'big')
                ^ int.from_bytes(data[:-16], 'big')).to_bytes(len(ct), 'big')

    def encrypt(self, clear):
        iv = os.urandom(16)
        out = [iv]
        prev = int.from_bytes(iv, 'big')
        for i in range(0, len(clear), 16):
            block = self.ecb_enc.update(
                (int.from_bytes(clear[i:i + 16], 'big') ^ prev).to_bytes(16, 'big'))
            out.append(block)
            prev = int.from_bytes(block, 'big')
        return b''.join(out)


class BmcServer(CommandHandlers):
    """The IPMI endpoint of one simulated BMC, bound to one UDP socket."""

    def __init__(self, bmc: M.BmcModel, sock):
        self.bmc = bmc
        self.sock = sock
        self.sessions = {}
        self.reservation = 0
        # IPMI GUID byte order: the RFC 4122 bytes reversed (IPMI 2.0
        # section 20.8), also used as GUIDc in RAKP
        self.guid = bmc.guid.bytes[::-1]
        self.handlers = self.command_table()
        # commands allowed without a session (IPMI 2.0 section 13.x)
        self.sessionless = {(0x06, 0x38), (0x06, 0x54)}

    # ------------------------------------------------------------------
    # datagram entry point

    def datagram(self, data, addr):
        if self.bmc.fault == 'freeze':
            return
        if len(data) < 8 or data[0] != 0x06:
            return
        cls = data[3] & 0x7F
        if cls == RMCP_CLASS_ASF:
            self._asf(data, addr)
        elif cls == RMCP_CLASS_IPMI:
            if data[4] == 0x06:
                self._rmcpplus(data, addr)
            elif data[4] == 0x00:
                self._ipmi15(data, addr)

    def _send(self, pkt, addr):
        try:
            self.sock.sendto(pkt, addr)
        except OSError:
            pass

    # ------------------------------------------------------------------
    # ASF presence ping

    def _asf(self, data, addr):
        if len(data) < 12:
            return
        iana, mtype, tag = struct.unpack('>IBB', data[4:10])
        if iana != ASF_IANA or mtype != 0x80:
            return
        pong = struct.pack('>BBBB', 0x06, 0x00, 0xFF, RMCP_CLASS_ASF)
        pong += struct.pack('>IBBBB', ASF_IANA, 0x40, tag, 0, 16)
        # OEM IANA, OEM defined, supported entities (IPMI, ASF 1.0),
        # supported interactions, reserved
        pong += struct.pack('>IIBB6x', ASF_IANA, 0, 0x81, 0x00)
        self._send(pong, addr)

    # ------------------------------------------------------------------
    # IPMI message framing

    @staticmethod
    def _parse_msg(msg):
        """Split an IPMI LAN request; None if malformed."""
        if len(msg) < 7:
            return None
        rs_sa, netfn_lun, _, rq_sa, seq_lun, cmd = msg[:6]
        return (netfn_lun >> 2, netfn_lun & 3, rq_sa, seq_lun, cmd,
                bytes(msg[6:-1]))

    @staticmethod
    def _build_rsp(req, cc, data):
        netfn, rs_lun, rq_sa, seq_lun, cmd, _ = req
        rq_lun = seq_lun & 3
        hdr = bytes([rq_sa, ((netfn | 1) << 2) | rq_lun])
        body = bytes([0x20, (seq_lun & 0xFC) | rs_lun, cmd, cc]) + data
        return hdr + bytes([_checksum(hdr)]) + body + bytes([_checksum(body)])

    def _dispatch(self, session, req):
        netfn, _, _, _, cmd, data = req
        handler = self.handlers.get((netfn, cmd))
        if handler is None:
            return CC_INVALID_COMMAND, b''
        if session is None and (netfn, cmd) not in self.sessionless:
            return CC_INSUFFICIENT_PRIV, b''
        if netfn == 0x2C and session.priv < self.bmc.dcmi_privilege:
            return CC_INSUFFICIENT_PRIV, b''  # like OpenIPMI's ipmi_sim: DCMI above the session's level
        try:
            return handler(session, data)
        except (IndexError, struct.error, ValueError):
            return CC_INVALID_DATA, b''

    def _ipmi15(self, data, addr):
        # IPMI 1.5 session header, only authentication type none / session 0
        if len(data) < 14:
            return
        sid = struct.unpack('<I', data[9:13])[0]
        length = data[13]
        if sid != 0:
            return
        req = self._parse_msg(data[14:14 + length])
        if req is None:
            return
        cc, rdata = self._dispatch(None, req)
        rsp = self._build_rsp(req, cc, rdata)
        pkt = b'\x06\x00\xff\x07\x00' + bytes(8) + bytes([len(rsp)]) + rsp
        self._send(pkt, addr)

    # ------------------------------------------------------------------
    # RMCP+

    def _rmcpplus(self, data, addr):
        if len(data) < 16:
            return
        ptype = data[5]
        sid, _seq, length = struct.unpack('<IIH', data[6:16])
        payload = data[16:16 + length]
        kind = ptype & 0x3F
        if sid == 0:
            if ptype & 0xC0:
                return
            if kind == 0x10:
                self._open_session(payload, addr)
            elif kind == 0x12:
                self._rakp1(payload, addr)
            elif kind == 0x14:
                self._rakp3(payload, addr)
            elif kind == 0x00:
                req = self._parse_msg(payload)
                if req is not None:
                    cc, rdata = self._dispatch(None, req)
                    self._send_plus(None, 0x00, self._build_rsp(req, cc, rdata),
                                    addr)
            return
        s = self.sessions.get(sid)
        if s is None or not s.established or kind != 0x00:
            return
        if not ptype & 0x40 or not ptype & 0x80:
            return     # cipher suites 3 and 17 require both
        n = s.ilen
        if len(data) < 16 + length + 2 + n:
            return
        if not hmac.compare_digest(
                hmac.digest(s.k1, data[4:-n], s.ihash)[:n], data[-n:]):
            return
        if len(payload) < 32 or len(payload) % 16:
            return
        clear = s.decrypt(payload)
        if clear[-1] > 15:
            return
        clear = clear[:-1 - clear[-1]]
        req = self._parse_msg(clear)
        if req is None:
            return
        s.last = time.monotonic()
        cc, rdata = self._dispatch(s, req)
        self._send_plus(s, 0x00, self._build_rsp(req, cc, rdata), addr)
        if req[4] == 0x3C and req[0] == 0x06 and cc == CC_OK:
            self.sessions.pop(struct.unpack('<I', req[5][:4])[0], None)

    def _send_plus(self, s, ptype, payload, addr):
        if s is None:
            pkt = struct.pack('<BBIIH', 0x06, ptype, 0, 0, len(payload))
            self._send(b'\x06\x00\xff\x07' + pkt + payload, addr)
            return
        pad = (-(len(payload) + 1)) % 16
        clear = payload + bytes(range(1, pad + 1)) + bytes([pad])
        body = s.encrypt(clear)
        s.out_seq = (s.out_seq + 1) & 0xFFFFFFFF or 1
        pkt = struct.pack('<BBIIH', 0x06, ptype | 0xC0, s.console_id,
                          s.out_seq, len(body)) + body
        ipad = (-(len(pkt) + 2)) % 4
        pkt += b'\xff' * ipad + bytes([ipad, 0x07])
        pkt += hmac.digest(s.k1, pkt, s.ihash)[:s.ilen]
        self._send(b'\x06\x00\xff\x07' + pkt, addr)

    def _new_managed_id(self):
        while True:
            sid = struct.unpack('<I', os.urandom(4))[0]
            if sid and sid not in self.sessions:
                return sid

    def _expire(self):
        now = time.monotonic()
        for sid in [k for k, v in self.sessions.items()
                    if now - v.last > SESSION_TIMEOUT]:
            del self.sessions[sid]
        while len(self.sessions) >= MAX_SESSIONS:
            oldest = min(self.sessions.values(), key=lambda v: v.last)
            del self.sessions[oldest.managed_id]

    def _open_session(self, p, addr):
        if len(p) < 8:
            return
        tag, req_priv = p[0], p[1] & 0x0F
        console_id = struct.unpack('<I', p[4:8])[0]
        algs = []
        for i in range(3):
            rec = p[8 + 8 * i:16 + 8 * i]
            # a missing or null (length 0) payload lets the BMC choose
            algs.append(rec[4] & 0x3F if len(rec) == 8 and rec[3] == 8 else None)
        suite = None
        for sid in self.bmc.cipher_suites:
            want = CIPHER_SUITES.get(sid)
            if want and all(a is None or a == w for a, w in zip(algs, want)):
                suite = sid
                break

        def reply(status, body=b''):
            out = bytes([tag, status, 0, 0]) + struct.pack('<I', console_id) + body
            self._send_plus(None, 0x11, out, addr)

        if suite is None:
            return reply(MSC_NO_CIPHER_SUITE_MATCH)
        if req_priv > 4:
            return reply(MSC_INVALID_ROLE)
        max_priv = req_priv or 4
        self._expire()
        managed_id = self._new_managed_id()
        s = Session(managed_id, console_id, suite, max_priv)
        self.sessions[managed_id] = s
        auth, integ, conf = CIPHER_SUITES[suite]
        body = struct.pack('<I', managed_id) + bytes([
            0, 0, 0, 8, auth, 0, 0, 0,
            1, 0, 0, 8, integ, 0, 0, 0,
            2, 0, 0, 8, conf, 0, 0, 0])
        out = bytes([tag, 0, max_priv, 0]) + struct.pack('<I', console_id) + body
        self._send_plus(None, 0x11, out, addr)

    def _rakp1(self, p, addr):
        if len(p) < 28:
            return
        tag = p[0]
        managed_id = struct.unpack('<I', p[4:8])[0]
        s = self.sessions.get(managed_id)
        rm = bytes(p[8:24])
        if s is not None and s.rakp2 is not None and s.rm == rm:
            return self._send_plus(None, 0x13, s.rakp2, addr)   # retransmit
        if s is None or s.established:
            out = bytes([tag, MSC_INVALID_SESSION_ID, 0, 0, 0, 0, 0, 0])
            return self._send_plus(None, 0x13, out, addr)
        role = p[24]
        ulen = p[27]
        uname = bytes(p[28:28 + ulen])
        cid = struct.pack('<I', s.console_id)

        def fail(status):
            self.sessions.pop(managed_id, None)
            self._send_plus(None, 0x13, bytes([tag, status, 0, 0]) + cid, addr)

        priv = role & 0x0F
        if priv > 4 or priv > s.max_priv:
            return fail(MSC_INVALID_ROLE)
        if uname != self.bmc.username.encode():
            return fail(MSC_UNAUTHORIZED_NAME)
        password = self.bmc.password.encode()
        if self.bmc.fault == 'authfail':
            # the BMC's idea of the password differs from the console's
            password = b'\x00authfail' + os.urandom(8)
        digest = AUTH_HASH[CIPHER_SUITES[s.suite][0]][0]
        s.rm, s.rc, s.role, s.uname, s.kuid = rm, os.urandom(16), role, uname, password
        s.priv = min(priv, 4) or s.max_priv
        s.last = time.monotonic()
        code = hmac.new(password, cid + struct.pack('<I', managed_id) + rm + s.rc
                        + self.guid + bytes([role, ulen]) + uname, digest).digest()
        s.rakp2 = bytes([tag, 0, 0, 0]) + cid + s.rc + self.guid + code
        self._send_plus(None, 0x13, s.rakp2, addr)

    def _rakp3(self, p, addr):
        if len(p) < 8:
            return
        tag, status = p[0], p[1]
        managed_id = struct.unpack('<I', p[4:8])[0]
        s = self.sessions.get(managed_id)
        if s is not None and s.rakp4 is not None and s.rakp3 == bytes(p):
            return self._send_plus(None, 0x15, s.rakp4, addr)   # retransmit
        if s is None or s.rc is None or s.established:
            out = bytes([tag, MSC_INVALID_SESSION_ID, 0, 0, 0, 0, 0, 0])
            return self._send_plus(None, 0x15, out, addr)
        cid = struct.pack('<I', s.console_id)
        if status != 0:
            # the console rejected RAKP 2 (e.g. wrong password): drop it
            self.sessions.pop(managed_id, None)
            return
        digest, icv_len = AUTH_HASH[CIPHER_SUITES[s.suite][0]]
        role_name = bytes([s.role, len(s.uname)]) + s.uname
        expected = hmac.new(s.kuid, s.rc + cid + role_name, digest).digest()
        if not hmac.compare_digest(expected, bytes(p[8:])):
            self.sessions.pop(managed_id, None)
            out = bytes([tag, MSC_INVALID_INTEGRITY_CHECK, 0, 0]) + cid
            return self._send_plus(None, 0x15, out, addr)
        sik = hmac.new(s.kuid, s.rm + s.rc + role_name, digest).digest()
        # Const1/Const2 are 20 bytes for every RAKP algorithm (IPMI 2.0
        # section 13.32; ipmitool, FreeIPMI and OpenBMC do the same for
        # RAKP-HMAC-SHA256)
        s.k1 = hmac.new(sik, b'\x01' * 20, digest).digest()
        k2 = hmac.new(sik, b'\x02' * 20, digest).digest()
        aes = algorithms.AES(k2[:16])
        s.ecb_enc = Cipher(aes, modes.ECB()).encryptor()
        s.ecb_dec = Cipher(aes, modes.ECB()).decryptor()
        s.ihash, s.ilen = INTEGRITY[CIPHER_SUITES[s.suite][1]]
        icv = hmac.new(sik, s.rm + struct.pack('<I', managed_id) + self.guid,
                       digest).digest()[:icv_len]
        s.established = True
        s.last = time.monotonic()
        s.rakp3, s.rakp4 = bytes(p), bytes([tag, 0, 0, 0]) + cid + icv
        self._send_plus(None, 0x15, s.rakp4, addr)
