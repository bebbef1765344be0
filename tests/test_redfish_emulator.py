"""The Redfish collector against sushy-tools' dynamic emulator (`sushy-emulator --fake`,
tests/peers/redfish.sh) behind HTTP basic auth: it refuses the session login with 401 (it asks
basic auth of every request), so the collector reads it with basic auth; a power action sent to
the emulator shows in the next poll; a wrong password is the emulator's own 401, readable."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from collectors.redfish import RedfishCollector, RedfishTarget
from tests.peer_fixtures import RedfishEmulator, running_emulator

@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedfishEmulator]:
    """The emulator with one fake system, behind basic auth."""
    with running_emulator(tmp_path_factory.mktemp("emulator"), 1) as running:
        yield running


def power_state(result) -> float:
    [value] = [s.value for s in result.samples if s.metric == "ipmi_chassis_power_state"]
    return value


def test_power_actions_show_in_the_next_poll(emulator: RedfishEmulator) -> None:
    url, system, USER, PASSWORD = emulator.url, emulator.system_path(), emulator.username, emulator.password
    with RedfishCollector([RedfishTarget("emu", url, USER, PASSWORD, system=system)]) as collector:
        before = collector.collect()[0]
        assert collector.clients["emu"].auth == "basic"
        done = httpx.post(f"{url}{system}/Actions/ComputerSystem.Reset", json={"ResetType": "On"},
                          auth=(USER, PASSWORD))
        assert done.status_code == 204, done.text
        deadline = time.monotonic() + 20  # the fake driver applies a power action 1-11 s later, as hardware does
        seen = []
        while time.monotonic() < deadline and (not seen or seen[-1] != 1.0):
            after = collector.collect()[0]
            assert after.ok
            seen.append(power_state(after))
            time.sleep(0.5)
    assert before.ok and power_state(before) == 0.0  # the fake system starts Off
    assert seen[-1] == 1.0 and set(seen) <= {0.0, 1.0}
    assert httpx.get(f"{url}{system}", auth=(USER, PASSWORD)).json()["PowerState"] == "On"
    temperatures = {s.labels["name"]: s.value for s in before.samples if s.metric == "ipmi_temperature_celsius"}
    chassis_path = httpx.get(f"{url}/redfish/v1/Chassis", auth=(USER, PASSWORD)).json()["Members"][0]["@odata.id"]
    chassis = httpx.get(f"{url}{chassis_path}", auth=(USER, PASSWORD)).json()
    thermal = httpx.get(f"{url}{chassis['Thermal']['@odata.id']}", auth=(USER, PASSWORD)).json()
    assert temperatures == {t["Name"]: t["ReadingCelsius"] for t in thermal["Temperatures"]} and temperatures
    # the emulator has no power reading: the part says so, the rest is kept
    assert "power: the chassis reports no power reading" in before.error


def test_a_wrong_password_is_the_emulators_401(emulator: RedfishEmulator) -> None:
    url, system, USER = emulator.url, emulator.system_path(), emulator.username
    with RedfishCollector([RedfishTarget("emu", url, USER, "not-it", system=system)]) as collector:
        [result] = collector.collect()
    assert not result.ok and not result.timed_out
    assert result.error == (f"authentication failed (check the BMC username/password): {url}{system} "
                            "answered HTTP 401: Incorrect username or password")
