"""python-ipmi's native RMCP+ ("lanplus") interface, as Kiln uses it.

Cipher suite 17 fix: python-ipmi 0.6.1 derives the session keys K1/K2 as HMAC(SIK, Const)
with Const as long as the hash: 32 bytes of 0x01/0x02 for RAKP-HMAC-SHA256. IPMI 2.0
section 13.32, ipmitool, FreeIPMI, OpenBMC and Kiln's BMC simulator use 20-byte constants for
every RAKP algorithm, so python-ipmi's suite 17 (and its default "17, then 3") fails right
after the RAKP handshake, with a RetryError on the first request. `KilnRmcpPlus` swaps the
keys python-ipmi builds for `SpecSessionKeys` on its own objects only; nothing in
python-ipmi is patched globally. For SHA-1 (suite 3) both derivations agree. The keys also
reuse their AES contexts (python-ipmi builds two cipher objects per message).
"""

from __future__ import annotations

import hmac
import os
import struct
import time
from typing import Any

from pyipmi.errors import CompletionCodeError, DecodingError, MessageStatusCodeError, RetryError
from pyipmi.interfaces.rmcp import RMCP_CLASS_ASF, RMCP_CLASS_IPMI, AsfPing, AsfPong
from pyipmi.interfaces.rmcpplus import (
    _MSC_ALGORITHM_REJECTED,
    AES_BLOCK_SIZE,
    AUTH_ALGORITHMS,
    CIPHER_SUITES,
    INTEGRITY_ALGORITHMS,
    PAYLOAD_AUTHENTICATED,
    PAYLOAD_ENCRYPTED,
    PAYLOAD_TYPE_IPMI,
    CipherSuite,
    RmcpPlus,
    SessionKeys,
)
from pyipmi.session import Session

# IPMI 2.0 section 13.32: Const1 = 0x01 * 20, Const2 = 0x02 * 20, whatever the hash
KEY_CONSTANT_LENGTH = 20
BMC_ADDRESS = 0x20
NETFN_APP = 0x06
CMD_CLOSE_SESSION, CMD_SET_SESSION_PRIVILEGE = 0x3C, 0x3B
# RMCP header of IPMI messages: version 6, reserved, sequence 0xFF (no RMCP ACK), class IPMI
RMCP_IPMI_HEADER = bytes((0x06, 0x00, 0xFF, RMCP_CLASS_IPMI))


class SpecSessionKeys(SessionKeys):
    """Session keys derived as IPMI 2.0 section 13.32 says (20-byte constants), with AES-CBC
    on cached AES contexts (python-ipmi builds two cipher objects per message)."""

    def __init__(self, suite: CipherSuite, sik: bytes) -> None:
        """Derive K1 (integrity) and K2 (confidentiality) from the session integrity key."""
        self.suite = suite
        digest = AUTH_ALGORITHMS[suite.authentication][0]
        self.k1 = hmac.new(sik, b"\x01" * KEY_CONSTANT_LENGTH, digest).digest()
        self.k2 = hmac.new(sik, b"\x02" * KEY_CONSTANT_LENGTH, digest).digest()
        integrity = INTEGRITY_ALGORITHMS.get(suite.integrity)
        # (hashlib name, length of the truncated code) for hmac.digest, the fast one-shot HMAC
        self._integrity = (integrity[0]().name, integrity[1]) if integrity else None
        self._aes: tuple[Any, Any] | None = None

    def auth_code(self, data: bytes) -> bytes:
        """The integrity code (HMAC with K1, truncated) of a message."""
        name, length = self._integrity  # type: ignore[misc]
        return hmac.digest(self.k1, data, name)[:length]

    def _ecb(self) -> tuple[Any, Any]:
        if self._aes is None:
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

            cipher = Cipher(algorithms.AES(self.k2[:AES_BLOCK_SIZE]), modes.ECB())
            self._aes = (cipher.encryptor(), cipher.decryptor())
        return self._aes

    def encrypt(self, data: bytes) -> bytes:
        """AES-CBC-128 with a random IV and the confidentiality pad; returns IV + ciphertext."""
        pad = (-(len(data) + 1)) % AES_BLOCK_SIZE
        data += bytes(range(1, pad + 1)) + bytes([pad])
        encryptor = self._ecb()[0]
        iv = os.urandom(AES_BLOCK_SIZE)
        out, previous = [iv], int.from_bytes(iv, "big")
        for i in range(0, len(data), AES_BLOCK_SIZE):
            block = int.from_bytes(data[i:i + AES_BLOCK_SIZE], "big") ^ previous
            encrypted = encryptor.update(block.to_bytes(AES_BLOCK_SIZE, "big"))
            out.append(encrypted)
            previous = int.from_bytes(encrypted, "big")
        return b"".join(out)

    def decrypt(self, data: bytes) -> bytes:
        """Decrypt IV + AES-CBC-128 ciphertext and strip the confidentiality pad."""
        if len(data) < 2 * AES_BLOCK_SIZE or len(data) % AES_BLOCK_SIZE:
            raise DecodingError(f"invalid encrypted payload length {len(data)}")
        ciphertext = data[AES_BLOCK_SIZE:]
        plain = self._ecb()[1].update(ciphertext)
        size = len(ciphertext)
        clear = (int.from_bytes(plain, "big") ^ int.from_bytes(data[:-AES_BLOCK_SIZE], "big")).to_bytes(size, "big")
        pad = clear[-1]
        if pad >= AES_BLOCK_SIZE or clear[-1 - pad:-1] != bytes(range(1, pad + 1)):
            raise DecodingError("invalid confidentiality pad")
        return clear[:-1 - pad]


class KilnRmcpPlus(RmcpPlus):
    """python-ipmi's RMCP+ interface with spec session keys (see the module docstring).

    `establish` opens a session in 4 round trips where python-ipmi's `establish_session`
    takes 6 (see there); python-ipmi still builds and checks the Open Session and RAKP
    messages and reads the FRU. `request` is the per-poll hot path: the same packets as
    python-ipmi's `send_and_receive_raw`, built and checked without its message objects (about
    a third of its CPU per request, measured). The ping raises `TimeoutError`/
    `ConnectionRefusedError` as such, and Close Session does not wait for the answer.
    """

    def __init__(self, cipher_suites: tuple[int, ...], retries: int) -> None:
        """Try `cipher_suites` in order (the next one when the BMC rejects the algorithms)."""
        super().__init__(keep_alive_interval=0, max_retries=retries, cipher_suite=cipher_suites[0])
        self.cipher_suites = tuple(cipher_suites)
        self._sik = b""
        self.packets_sent = 0  # every datagram to the BMC: ping, handshake, requests

    def _send_rmcp_msg(self, sdu: bytes | None, class_of_msg: int) -> None:
        self.packets_sent += 1
        super()._send_rmcp_msg(sdu, class_of_msg)

    @property  # type: ignore[override]
    def _keys(self) -> SessionKeys | None:
        return self.__dict__.get("_spec_keys")

    @_keys.setter
    def _keys(self, keys: SessionKeys | None) -> None:
        # establish_session() builds python-ipmi's SessionKeys from the SIK that _rakp returned
        if keys is not None and not isinstance(keys, SpecSessionKeys):
            keys = SpecSessionKeys(keys.suite, self._sik)
        self.__dict__["_spec_keys"] = keys

    def establish(self, session: Session) -> None:
        """Open the session: presence ping, Open Session (the next cipher suite while the BMC
        rejects the algorithms), RAKP 1/2 and 3/4, and Set Session Privilege Level only above
        user, the level an RMCP+ session starts at. python-ipmi also asks Get Channel
        Authentication Capabilities first, which RMCP+ does not need (Open Session negotiates
        the algorithms, RAKP authenticates) and which costs a round trip per new session."""
        self._session, self._keys = None, None
        self.host, self.port = session.rmcp_host, session.rmcp_port
        self._sock.connect((self.host, self.port))
        self.ping()
        suites = [CIPHER_SUITES[i] for i in self.cipher_suites]
        for suite in suites:
            try:
                managed_session_id = self._open_session(session, suite)
                break
            except MessageStatusCodeError as exc:
                if exc.msc not in _MSC_ALGORITHM_REJECTED or suite is suites[-1]:
                    raise
        sik = self._rakp(session, suite, managed_session_id)
        session.sid, session.sequence_number, session.activated = managed_session_id, 0, True
        self._session = session
        self._keys = SessionKeys(suite, sik)
        if session.priv_level > Session.PRIV_LEVEL_USER:
            rsp = self.request(NETFN_APP, CMD_SET_SESSION_PRIVILEGE, bytes((session.priv_level,)))
            if not rsp or rsp[0]:
                raise CompletionCodeError(rsp[0] if rsp else 0xFF, CMD_SET_SESSION_PRIVILEGE, NETFN_APP)

    def _rakp(self, session: Any, suite: CipherSuite, managed_session_id: int) -> bytes:
        self._sik = super()._rakp(session, suite, managed_session_id)
        return self._sik

    @property
    def negotiated_suite(self) -> int | None:
        """The cipher suite of the established session."""
        return self._keys.suite.id if self._keys is not None else None

    def ping(self) -> None:
        """RMCP presence ping; skips late IPMI replies still in the socket buffer.

        Raises TimeoutError (no pong within the timeout) or ConnectionRefusedError (ICMP port
        unreachable), which python-ipmi would fold into one IpmiConnectionError.
        """
        timeout = self._timeout or 2.0
        deadline = time.monotonic() + timeout
        self._send_asf_msg(AsfPing())
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                self._sock.settimeout(remaining)
                try:
                    _, class_of_msg, data = self._receive_rmcp_msg()
                    if class_of_msg == RMCP_CLASS_ASF:
                        AsfPong().unpack(data)
                        return
                except DecodingError:
                    continue
        finally:
            self._sock.settimeout(timeout)
        raise TimeoutError(f"no RMCP pong from {self.host}:{self.port}")

    def _send_request(self, netfn: int, cmd: int, data: bytes, lun: int) -> int:
        """Send one IPMI request in the session; returns its IPMB sequence number."""
        keys, session = self._keys, self._session
        if keys is None or session is None:
            raise DecodingError("no RMCP+ session established")
        self._inc_sequence_number()
        seq = self.next_sequence_number
        head = bytes((BMC_ADDRESS, netfn << 2 | lun))
        body = bytes((self.slave_address, seq << 2, cmd)) + data
        message = head + bytes((-sum(head) & 0xFF,)) + body + bytes((-sum(body) & 0xFF,))
        session.increment_sequence_number()
        payload_type = PAYLOAD_TYPE_IPMI
        if keys.encrypted:
            message, payload_type = keys.encrypt(message), payload_type | PAYLOAD_ENCRYPTED
        if keys.authenticated:
            payload_type |= PAYLOAD_AUTHENTICATED
        pdu = struct.pack("<BBIIH", 0x06, payload_type, session.sid, session.sequence_number, len(message)) + message
        if keys.authenticated:
            pad = (-(len(pdu) + 2)) % 4
            pdu += b"\xff" * pad + bytes((pad, 0x07))
            pdu += keys.auth_code(pdu)
        self._sock.send(RMCP_IPMI_HEADER + pdu)
        self.packets_sent += 1
        self._last_request_time = time.monotonic()
        return seq

    def _await_response(self, netfn: int, cmd: int, seq: int) -> bytes:
        """Wait for the response to request (netfn, cmd, seq); skips anything else (late
        answers to earlier requests, packets failing the integrity check). TimeoutError."""
        keys, timeout = self._keys, self._timeout or 2.0
        deadline = time.monotonic() + timeout
        try:
            while True:
                packet = self._sock.recv(4096)
                response = _ipmi_payload(packet, keys, self._console_session_id)
                if (response is not None and len(response) >= 8 and response[1] >> 2 == netfn | 1
                        and response[5] == cmd and response[4] >> 2 == seq
                        and not sum(response[:3]) & 0xFF and not sum(response[3:]) & 0xFF):
                    return response[6:-1]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                self._sock.settimeout(remaining)
        finally:
            self._sock.settimeout(timeout)

    def request(self, netfn: int, cmd: int, data: bytes = b"", lun: int = 0) -> bytes:
        """Send a request to the BMC in the session and return the completion code + data;
        an unanswered request is sent again `max_retries` times, then RetryError."""
        with self.transaction_lock:
            for _ in range(self.max_retries + 1):
                seq = self._send_request(netfn, cmd, data, lun)
                try:
                    return self._await_response(netfn, cmd, seq)
                except TimeoutError:
                    continue
        raise RetryError(f"no response from {self.host}:{self.port}")

    def close_session_nowait(self) -> None:
        """Send Close Session without waiting (the BMC may be gone); frees the BMC's slot."""
        session = self._session
        if session is None or not session.activated or self._keys is None:
            return
        try:
            self._send_request(NETFN_APP, CMD_CLOSE_SESSION, struct.pack("<I", session.sid), 0)
        except OSError:
            pass  # unreachable: the BMC times the session out by itself
        session.activated = False


def _ipmi_payload(packet: bytes, keys: SessionKeys | None, console_session_id: int) -> bytes | None:
    """The clear IPMI payload of an RMCP+ session packet for us, None for anything else."""
    if len(packet) < 20 or packet[3] != RMCP_CLASS_IPMI or packet[4] != 0x06 or packet[5] & 0x3F:
        return None
    session_id, _, length = struct.unpack_from("<IIH", packet, 6)
    if session_id != console_session_id or keys is None:
        return None
    pdu = packet[4:]
    if keys.authenticated:
        n = keys.auth_code_length
        if not packet[5] & PAYLOAD_AUTHENTICATED or not hmac.compare_digest(keys.auth_code(pdu[:-n]), pdu[-n:]):
            return None
    payload = pdu[12:12 + length]
    if keys.encrypted:
        if not packet[5] & PAYLOAD_ENCRYPTED:
            return None
        try:
            payload = keys.decrypt(payload)
        except DecodingError:
            return None
    return payload
