"""Redfish logins: one session per BMC, reused, renewed on 401, deleted on close; basic auth
where the service has no sessions; the whole poll of a target bounded by its target timeout.

sushy-tools' `sushy-static` (the real peer) has no SessionService: it answers the login POST
with 204 and no token, so against it the collector must fall back to basic auth, which its log
(it prints every request's headers) shows. Sessions themselves are tested against
`SessionBmc`, a stand-in that follows DSP0266's session login (POST
/redfish/v1/SessionService/Sessions with UserName/Password → 201, `X-Auth-Token`, `Location`;
a request with an unknown token → 401; DELETE of the session ends it) and serves DMTF's
public-tower mockup files verbatim (tests/data/upstream/redfish/)."""

from __future__ import annotations

import itertools
import json
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks.redfish_fleet import fleet_stats, running_fleet
from collectors.redfish import RedfishCollector, RedfishTarget
from collectors.redfish_http import tls_context
from tests.peer_fixtures import TOWER, TOWER_SYSTEM, running_emulator, tower_log_gap
from tests.peers.harness import running_peer

SYSTEM = TOWER_SYSTEM


class SessionBmc:
    """A Redfish service with sessions (see the module docstring); `delay` slows every GET."""

    def __init__(self, username: str, password: str, delay: float = 0.0) -> None:
        self.tokens: dict[str, str] = {}  # token -> session path
        self.logins, self.deleted, self.seen = 0, [], []  # seen: (method, path, auth header names)
        numbers = itertools.count(1)
        bmc = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: bytes = b"", **headers: str) -> None:
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _note(self) -> None:
                bmc.seen.append((self.command, self.path, {h for h in ("X-Auth-Token", "Authorization") if h in self.headers}))

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                self._note()
                login = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/redfish/v1/SessionService/Sessions" or login != {"UserName": username,
                                                                                    "Password": password}:
                    return self._answer(401, b'{"error": {"message": "Invalid username or password"}}')
                bmc.logins += 1
                token, path = f"token-{next(numbers):04d}-secret", f"/redfish/v1/SessionService/Sessions/{bmc.logins}"
                bmc.tokens[token] = path
                self._answer(201, json.dumps({"@odata.id": path, "UserName": username}).encode(),
                             **{"X-Auth-Token": token, "Location": path})

            def do_GET(self) -> None:  # noqa: N802
                self._note()
                time.sleep(delay)
                if self.headers.get("X-Auth-Token") not in bmc.tokens and self.path != "/redfish/v1/":
                    return self._answer(401, b'{"error": {"message": "No valid session"}}')
                file = TOWER / self.path.removeprefix("/redfish/v1").strip("/") / "index.json"
                self._answer(200, file.read_bytes()) if file.is_file() else self._answer(404)

            def do_DELETE(self) -> None:  # noqa: N802
                self._note()
                bmc.deleted.append(bmc.tokens.pop(self.headers.get("X-Auth-Token", ""), None))
                self._answer(204)

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_port}"

    def expire_sessions(self) -> None:
        """Forget every session, as a BMC does after SessionTimeout or a restart."""
        self.tokens.clear()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def session_bmc() -> Iterator[SessionBmc]:
    bmc = SessionBmc("operator", "s3cret-pw")
    yield bmc
    bmc.close()


def test_one_session_is_made_and_reused_across_polls(session_bmc: SessionBmc, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    target = RedfishTarget("tower", session_bmc.url, "operator", "s3cret-pw", system=SYSTEM)
    with RedfishCollector([target]) as collector:
        first, second = collector.collect()[0], collector.collect()[0]
        token = next(iter(session_bmc.tokens))
        assert collector.clients["tower"].auth == "session"
        assert token not in repr(collector.clients["tower"])
    assert first.ok and second.ok, (first.error, second.error)
    assert first.error == tower_log_gap(session_bmc.url) and len(first.samples) == len(second.samples) > 20
    assert session_bmc.logins == 1
    gets = [(path, auth) for method, path, auth in session_bmc.seen if method == "GET"]
    assert len(gets) > 40 and all(auth == {"X-Auth-Token"} for _, auth in gets)  # no password on the wire again
    assert session_bmc.deleted == ["/redfish/v1/SessionService/Sessions/1"]  # close() ends the session
    assert token not in caplog.text and "s3cret-pw" not in caplog.text


def test_an_expired_session_is_renewed_once(session_bmc: SessionBmc) -> None:
    target = RedfishTarget("tower", session_bmc.url, "operator", "s3cret-pw", system=SYSTEM)
    with RedfishCollector([target]) as collector:
        assert collector.collect()[0].ok
        session_bmc.expire_sessions()
        result = collector.collect()[0]
        assert collector.clients["tower"].logins == 2
    assert result.ok and result.error == tower_log_gap(session_bmc.url)
    assert session_bmc.logins == 2


def test_a_refused_login_is_a_readable_error_and_retried_next_poll(session_bmc: SessionBmc) -> None:
    target = RedfishTarget("tower", session_bmc.url, "operator", "wrong", system=SYSTEM)
    with RedfishCollector([target]) as collector:
        first, second = collector.collect()[0], collector.collect()[0]
    for result in (first, second):
        assert not result.ok and not result.timed_out and result.samples == []
        # the login was refused, then the same request with basic auth: the BMC's answer to that is the error
        assert result.error == (f"authentication failed (check the BMC username/password): {session_bmc.url}"
                                f"{SYSTEM} answered HTTP 401: No valid session")
        assert "wrong" not in result.error
    methods = [(method, path) for method, path, _ in session_bmc.seen]
    assert methods == [("POST", "/redfish/v1/SessionService/Sessions"), ("GET", SYSTEM)] * 2
    assert [auth for method, _, auth in session_bmc.seen if method == "GET"] == [{"Authorization"}] * 2


def test_the_target_timeout_bounds_a_whole_poll() -> None:
    slow = SessionBmc("operator", "pw", delay=0.2)  # each answer in time, but a poll makes ~45 of them
    try:
        target = RedfishTarget("tower", slow.url, "operator", "pw", system=SYSTEM)
        with RedfishCollector([target], timeout=5, target_timeout=1.0) as collector:
            began = time.monotonic()
            [result] = collector.collect()
            took = time.monotonic() - began
    finally:
        slow.close()
    assert took < 2.0
    assert slow.deleted == ["/redfish/v1/SessionService/Sessions/1"]  # the spent deadline does not stop the logout
    assert result.ok  # the System was read in time: what came later is named, not lost
    assert "the BMC did not finish answering within 1 s (the target timeout)" in result.error


def test_sushy_static_has_no_sessions_so_basic_auth_is_used(tmp_path_factory: pytest.TempPathFactory) -> None:
    state = tmp_path_factory.mktemp("sushy-basic")
    with running_peer("redfish", state, str(TOWER)) as url:
        target = RedfishTarget("tower", url, "admin", "basic-pw", system=SYSTEM)
        with RedfishCollector([target]) as collector:
            [result] = collector.collect()
            assert collector.clients["tower"].auth == "basic"
            assert collector.clients["tower"].logins == 0
    assert result.ok and result.error == tower_log_gap(url)
    logged = (state / "sushy-static.log").read_text()
    assert "Authorization: Basic YWRtaW46YmFzaWMtcHc=" in logged  # base64("admin:basic-pw"), as sushy-static saw it
    assert "X-Auth-Token" not in logged


def test_clients_share_one_tls_context_and_still_check_certificates(tmp_path: Path) -> None:
    """Every client with the same `verify` shares one TLS context (one CA bundle loaded, not one
    per BMC); a self-signed BMC (sushy-emulator over HTTPS) is still refused unless verify is off."""
    assert tls_context(True) is tls_context(True) and tls_context(False) is tls_context(False)
    assert tls_context(True).verify_mode is ssl.CERT_REQUIRED and tls_context(False).verify_mode is ssl.CERT_NONE
    with running_emulator(tmp_path / "tls", 1, "https") as bmc:
        targets = [RedfishTarget(f"n{i}", bmc.url, bmc.username, bmc.password, system=bmc.system_path(),
                                 verify=i < 2) for i in range(4)]
        with RedfishCollector(targets) as collector:
            results = collector.collect()
    assert [r.ok for r in results] == [False, False, True, True]
    assert all("CERTIFICATE_VERIFY_FAILED" in (r.error or "") for r in results[:2])
    assert all(any(s.metric == "ipmi_chassis_power_state" for s in r.samples) for r in results[2:])


def test_close_ends_every_session_concurrently() -> None:
    """Closing ends the BMCs' sessions on the collector's threads, not one BMC after another
    (1,000 DELETEs at 50 ms each were 50 s of shutdown). The BMCs: benchmarks/redfish_fleet.py's
    stand-in (public-tower verbatim, DSP0266 sessions), 200 ms per answer."""
    with running_fleet(TOWER, 8, processes=1, latency_ms=200, password="pw") as (port, addresses, _):
        targets = [RedfishTarget(f"n{i}", f"http://{a}:{port}", "admin", "pw", system=SYSTEM)
                   for i, a in enumerate(addresses)]
        collector = RedfishCollector(targets, workers=8)
        assert all(r.ok for r in collector.collect())
        began = time.monotonic()
        collector.close()
        took = time.monotonic() - began
        collector.close()  # a second close is harmless
        stats = fleet_stats(port, 1)
    assert stats["logins"] == 8 and stats["sessions_deleted"] == 8
    assert took < 4 * 0.2, f"8 session DELETEs at 200 ms each took {took:.2f} s: not concurrent"
