"""The Redfish collector's legacy path against a Redfish service nobody here wrote: sushy-tools'
`sushy-static` (tests/peers/redfish.sh) serving DMTF's public-rackmount1 mockup with only its
legacy `Power`/`Thermal` resources vendored (tests/data/upstream/redfish/, cited there): the
chassis links EnvironmentMetrics, PowerSubsystem and ThermalSubsystem, which answer 404, so the
collector must say so and read the legacy resources instead. Every value is compared with what
the mockup's JSON says, read here on its own; loopback stubs answer 401 and 503 or never
answer, which must give readable errors. The new shapes: tests/test_redfish_subsystems.py."""

from __future__ import annotations

import json
import math
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from collectors.redfish import RedfishCollector, RedfishTarget
from tests.peers.harness import running_peer

MOCKUP = Path(__file__).parent / "data" / "upstream" / "redfish" / "public-rackmount1"


def mockup(path: str) -> dict:
    """A mockup resource as the files hold it (`Chassis/1U/Power` -> Chassis/1U/Power/index.json)."""
    return json.loads((MOCKUP / path / "index.json").read_text())


URL: list[str] = []  # the peer's URL, for expected error texts


@pytest.fixture(scope="module")
def redfish_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_peer("redfish", tmp_path_factory.mktemp("redfish"), str(MOCKUP)) as url:
        URL[:] = [url]
        yield url


@pytest.fixture(scope="module")
def mockup_result(redfish_url: str):
    with RedfishCollector([RedfishTarget("node-1", redfish_url, "root", "secret")]) as collector:
        [result] = collector.collect()
    return result


def values(result, metric: str) -> dict[tuple[str, str] | None, tuple[float, str]]:
    """metric's samples by (id, name) label pair (None without labels) -> (value, unit)."""
    return {(s.labels["id"], s.labels["name"]) if s.labels else None: (s.value, s.unit)
            for s in result.samples if s.metric == metric}


def expected_state(reading: float, member: dict) -> float:
    """Threshold state worked out here from the member's thresholds, as ipmi_exporter grades."""
    def crossed(kind: str) -> bool:
        upper, lower = member.get(f"UpperThreshold{kind}"), member.get(f"LowerThreshold{kind}")
        return (upper is not None and reading >= upper) or (lower is not None and reading <= lower)
    if not any(k.startswith(("UpperThreshold", "LowerThreshold")) for k in member):
        return math.nan
    return 2.0 if crossed("Fatal") or crossed("Critical") else 1.0 if crossed("NonCritical") else 0.0


def test_the_mockup_result_is_ok_and_names_what_it_left_out(mockup_result) -> None:
    assert mockup_result.ok, mockup_result.error
    assert mockup_result.target == "node-1"
    disabled = [t for t in mockup("Chassis/1U/Thermal")["Temperatures"] if t.get("ReadingCelsius") is None]
    assert len(disabled) == 1  # "CPU2 Temp", State Disabled: no reading
    assert mockup_result.skipped == {"no temperature reading": 1}
    chassis = mockup("Chassis/1U")
    parts = mockup_result.error.split("; ")
    for i, name in enumerate(("EnvironmentMetrics", "PowerSubsystem", "ThermalSubsystem")):
        assert parts[i] == f"{name}: the BMC has no {URL[0]}{chassis[name]['@odata.id']} (HTTP 404)"
    system = mockup("Systems/437XR1138R2")
    assert parts[3] == f"processors: the BMC has no {URL[0]}{system['Processors']['@odata.id']} (HTTP 404)"
    assert parts[4] == f"log: the BMC has no {URL[0]}{system['LogServices']['@odata.id']} (HTTP 404)"
    assert parts[5:] == ["skipped 1 series: 1 no temperature reading"]
    assert {s.source for s in mockup_result.samples} == {"redfish"}
    assert {s.entity for s in mockup_result.samples} == {"node-1"}


def test_power_state_and_health_are_the_systems(mockup_result) -> None:
    system = mockup("Systems/437XR1138R2")
    assert system["PowerState"] == "On" and system["Status"]["HealthRollup"] == "OK"
    assert values(mockup_result, "ipmi_chassis_power_state") == {None: (1.0, "state")}
    assert values(mockup_result, "redfish_health_state") == {None: (0.0, "state")}


def test_watts_are_the_chassis_power_control_reading(mockup_result) -> None:
    watts = mockup("Chassis/1U/Power")["PowerControl"][0]["PowerConsumedWatts"]
    assert watts == 344
    assert values(mockup_result, "ipmi_dcmi_power_consumption_watts") == {None: (float(watts), "watts")}


def test_every_temperature_and_its_state(mockup_result) -> None:
    readable = [t for t in mockup("Chassis/1U/Thermal")["Temperatures"] if t.get("ReadingCelsius") is not None]
    assert len(readable) == 2
    expected = {(t["MemberId"], t["Name"]): (float(t["ReadingCelsius"]), "celsius") for t in readable}
    states = {(t["MemberId"], t["Name"]): (expected_state(t["ReadingCelsius"], t), "state") for t in readable}
    assert values(mockup_result, "ipmi_temperature_celsius") == expected
    assert values(mockup_result, "ipmi_temperature_state") == states
    assert expected == {("0", "CPU1 Temp"): (41.0, "celsius"), ("2", "Chassis Intake Temp"): (25.0, "celsius")}


def test_every_fan(mockup_result) -> None:
    fans = mockup("Chassis/1U/Thermal")["Fans"]
    assert {f["ReadingUnits"] for f in fans} == {"RPM"}
    expected = {(f["MemberId"], f["Name"]): (float(f["Reading"]), "rpm") for f in fans}
    assert values(mockup_result, "ipmi_fan_speed_rpm") == expected
    assert values(mockup_result, "ipmi_fan_speed_state") == {
        (f["MemberId"], f["Name"]): (expected_state(f["Reading"], f), "state") for f in fans}
    assert len(expected) == 2


def test_a_wrong_base_path_is_a_readable_error(redfish_url: str) -> None:
    with RedfishCollector([RedfishTarget("node-1", redfish_url + "/nowhere")]) as collector:
        [result] = collector.collect()
    assert not result.ok and "HTTP 404" in result.error and "/nowhere/redfish/v1/" in result.error


class Stub(BaseHTTPRequestHandler):
    """Answers every GET with the server's `status` and `body` (default: a Redfish error body)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        status, body = self.server.status, self.server.body  # type: ignore[attr-defined]
        body = body or json.dumps({"error": {"code": "Base.1.8.GeneralError", "message": f"stub says {status}"}}).encode()
        self.send_response(status)
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="Redfish"')
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub():
    servers = []

    def start(status: int, body: bytes = b"") -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
        server.status, server.body = status, body  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_401_says_authentication_failed(stub) -> None:
    with RedfishCollector([RedfishTarget("node-1", stub(401), "root", "wrong")], timeout=2) as collector:
        [result] = collector.collect()
    assert not result.ok and not result.timed_out and result.samples == []
    assert result.error.startswith("authentication failed (check the BMC username/password)")
    assert result.error.endswith("answered HTTP 401: stub says 401")


def test_503_says_unavailable(stub) -> None:
    with RedfishCollector([RedfishTarget("node-1", stub(503))], timeout=2) as collector:
        [result] = collector.collect()
    assert not result.ok and not result.timed_out
    assert result.error.startswith("the BMC is unavailable (HTTP 503 from http://127.0.0.1:")
    assert result.error.endswith(": stub says 503")


def test_a_bmc_that_never_answers_times_out_and_the_others_still_answer(stub, redfish_url: str) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nothing ever reads or answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    try:
        targets = [RedfishTarget("quiet", url, timeout=0.5), RedfishTarget("node-1", redfish_url),
                   RedfishTarget("refusing", stub(401))]
        with RedfishCollector(targets, timeout=5) as collector:
            quiet, node, refusing = collector.collect()
    finally:
        silent.close()
    assert not quiet.ok and quiet.timed_out and quiet.error == f"no answer from {url}/redfish/v1/ within 0.5 s"
    assert quiet.seconds < 3
    assert node.ok and node.samples
    assert not refusing.ok and "HTTP 401" in refusing.error


def test_odd_answers_are_errors_not_exceptions(stub) -> None:
    targets = [RedfishTarget("no-systems", stub(200, b'{"Name": "Root Service"}')),
               RedfishTarget("not-json", stub(200, b"<html>login</html>")),
               RedfishTarget("odd", stub(200, b'{"Systems": "not a link"}')),
               RedfishTarget("odder", stub(200, b'{"Links": {"Chassis": [{"@odata.id": 7}]}}'),
                             system="/redfish/v1/S/1")]
    with RedfishCollector(targets, timeout=2) as collector:
        no_systems, not_json, odd, odder = collector.collect()
    assert not no_systems.ok and no_systems.error == "the Redfish service lists no ComputerSystem"
    assert not not_json.ok and not_json.error.endswith("/redfish/v1/ did not answer JSON")
    assert not odd.ok and odd.error == "the Redfish service lists no ComputerSystem"  # no link: no Systems
    assert not odder.ok and odder.error.startswith("unexpected answer from http://127.0.0.1:")  # a number as a link
    assert "TypeError" in odder.error


def test_targets_must_have_distinct_names() -> None:
    with pytest.raises(ValueError, match="distinct"):
        RedfishCollector([RedfishTarget("a", "http://x"), RedfishTarget("a", "http://y")])


def test_threshold_states_of_the_mockups_intake_sensor() -> None:
    from collectors.redfish_readers import severity

    intake = next(t for t in mockup("Chassis/1U/Thermal")["Temperatures"] if t["Name"] == "Chassis Intake Temp")
    # UNC 30, UC 40, UF 50; LNC 10, LC 5, LF 0
    assert [severity(r, intake) for r in (25, 30, 39, 40, 55, 10, 6, 5, -1)] == [0, 1, 1, 2, 2, 1, 1, 2, 2]
    assert math.isnan(severity(25, {"Name": "no thresholds"}))
