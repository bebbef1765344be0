"""Kiln observable in an LGTM / OpenTelemetry stack: JSON logs without secrets, OTLP traces,
and the worker's /metrics (collector cycle and bills-run durations).

The servers and the worker run as real `kiln` subprocesses; traces go to a loopback OTLP
receiver that decodes them with upstream's opentelemetry-proto (tests/otlp_receiver.py).
"""

from __future__ import annotations

import io
import json
import logging
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from kiln.app import create_app
from kiln.logs import configure_logging, log_context
from kiln.security import SecretBox
from kiln.settings import Settings
from kiln.telemetry import NO_SPAN, configure_tracing, flush_traces, span
from tests.browser import free_port
from tests.cli_helpers import KILN, base_env, run
from tests.conftest import TEST_SECRET_KEY
from tests.factories import World
from tests.fleet_helpers import node_payload, wait_operations
from tests.otlp_receiver import OtlpReceiver, otlp_receiver

BMC_PASSWORD = "bmc-pass-7Qx"
TRACEPARENT_TRACE, TRACEPARENT_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


def json_lines(text: str) -> list[dict]:
    """Every non-empty line of `text`, each parsed as JSON (fails on the first that is not)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Kiln's JSON handler writing into a buffer; the default text handler back afterwards."""
    buffer = io.StringIO()
    configure_logging("DEBUG", "json", stream=buffer)
    yield buffer
    configure_logging("INFO", "text")


def test_json_lines_carry_the_context_and_never_a_secret(json_log: io.StringIO) -> None:
    box = SecretBox("k" * 40)
    password = box.decrypt(box.encrypt(BMC_PASSWORD))  # decrypted: from now on never written
    token = "kiln_" + "Ab3" * 14 + "Z"
    log = logging.getLogger("kiln.test")
    with log_context(request_id="req-1", user="alice", tenant="3"), log_context(node="gpu-7"):
        log.info("logging in to %s as admin/%s", "10.0.0.7", password)  # a password logged by mistake
        log.warning("request headers: %s", {"Authorization": f"Bearer {token}", "Accept": "application/json"})
        log.info("retrying with token %s", token)
        log.info("database at postgresql://kiln:pg-pass-99@db:5432/kiln; ironic password=ir0nic-pw&x=1")
        try:
            raise ConnectionError(f"BMC refused {password}")
        except ConnectionError:
            log.exception("poll failed")
    log.info("outside")
    text = json_log.getvalue()
    for secret in (BMC_PASSWORD, token, "pg-pass-99", "ir0nic-pw", "Ab3Ab3"):
        assert secret not in text
    lines = json_lines(text)
    assert len(lines) == 6
    first = lines[0]
    assert set(first) == {"time", "level", "logger", "message", "request_id", "user", "tenant", "node"}
    assert (first["level"], first["logger"], first["request_id"], first["user"], first["tenant"], first["node"]) == (
        "info", "kiln.test", "req-1", "alice", "3", "gpu-7")
    assert first["message"] == "logging in to 10.0.0.7 as admin/[REDACTED]" and first["time"].endswith("Z")
    assert "'Authorization': '[REDACTED]'" in lines[1]["message"] and "application/json" in lines[1]["message"]
    assert lines[2]["message"] == "retrying with token kiln_[REDACTED]"
    assert "postgresql://kiln:[REDACTED]@db:5432/kiln" in lines[3]["message"] and "x=1" in lines[3]["message"]
    assert lines[4]["level"] == "error" and "ConnectionError: BMC refused [REDACTED]" in lines[4]["exception"]
    assert "node" not in lines[5] and "request_id" not in lines[5]  # the context ends with its block


def test_text_logs_are_redacted_too() -> None:
    buffer = io.StringIO()
    configure_logging("INFO", "text", stream=buffer)
    try:
        logging.getLogger("kiln.test").info("Authorization: Bearer abcdef0123456789")
    finally:
        configure_logging("INFO", "text")
    assert buffer.getvalue().rstrip().endswith("INFO kiln.test: Authorization: [REDACTED]")


def test_tracing_off_hands_out_a_do_nothing_span() -> None:
    configure_tracing(None, "kiln-test")
    with span("kiln.anything", {"a": 1}) as current:
        assert current is NO_SPAN
        current.set_attribute("b", 2)  # and does nothing


@pytest.fixture
def cli_db(tmp_path: Path) -> dict[str, str]:
    """Environment of a migrated SQLite database with tenant acme, its member alice and one
    fake-provisioned node whose BMC does not answer."""
    env = base_env(tmp_path, KILN_SECRET_KEY=TEST_SECRET_KEY)
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("name,provisioner,bmc_address,bmc_username,bmc_password\n"
                     f"gpu-1,fake,ipmi://127.0.0.1:{free_port()},admin,{BMC_PASSWORD}\n")
    for args in (("migrate",), ("tenants", "create", "acme"),
                 ("users", "create", "alice", "--role", "tenant-member", "--tenant", "acme"), ("nodes", "import", str(nodes))):
        assert run(env, *args).returncode == 0, args
    return env


def wait_http(url: str, timeout: float = 40) -> httpx.Response:
    """GET `url` until something answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            time.sleep(0.2)
    pytest.fail(f"nothing answered on {url} within {timeout} s")


def stop(process: subprocess.Popen[str]) -> str:
    """Terminate a server and return what it wrote on stderr."""
    process.terminate()
    return process.communicate(timeout=30)[1]


def test_serve_logs_json_lines_with_request_id_user_and_tenant(cli_db: dict[str, str]) -> None:
    token = run(cli_db, "tokens", "create", "alice").stdout.strip()
    tenant_id = json.loads(run(cli_db, "tenants", "list", "-o", "json").stdout)[0]["id"]
    port = free_port()
    process = subprocess.Popen([KILN, "serve", "--port", str(port)], env={**cli_db, "KILN_LOG_FORMAT": "json"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        base = f"http://127.0.0.1:{port}/api/v1/nodes"
        mine = httpx.get(base, headers={"Authorization": f"Bearer {token}", "X-Request-ID": "lb-42"})
        fresh = httpx.get(base, headers={"Authorization": f"Bearer {token}", "X-Request-ID": "not one, has spaces"})
        refused = httpx.get(base, headers={"Authorization": "Bearer kiln_wrong"})
    finally:
        stderr = stop(process)
    assert mine.status_code == 200 and mine.headers["X-Request-ID"] == "lb-42"
    assert fresh.status_code == 200 and len(fresh.headers["X-Request-ID"]) == 32 and " " not in fresh.headers["X-Request-ID"]
    assert refused.status_code == 401 and refused.headers["X-Request-ID"]
    lines = json_lines(stderr)  # every line uvicorn and Kiln wrote is JSON
    access = [line for line in lines if line["logger"] == "uvicorn.access" and "/api/v1/nodes" in line["message"]]
    assert len(access) == 3
    assert (access[0]["request_id"], access[0]["user"], access[0]["tenant"]) == ("lb-42", "alice", str(tenant_id))
    assert access[1]["request_id"] == fresh.headers["X-Request-ID"]
    assert access[2]["request_id"] == refused.headers["X-Request-ID"] and "user" not in access[2]
    assert token not in stderr and token[5:] not in stderr


def test_worker_traces_cycles_and_bills_and_serves_their_durations(cli_db: dict[str, str]) -> None:
    metrics_port = free_port()
    with otlp_receiver() as receiver:
        env = {**cli_db, "KILN_LOG_FORMAT": "json", "KILN_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "200",
               "KILN_WORKER_METRICS_PORT": str(metrics_port), "KILN_IPMI_TIMEOUT": "0.5"}
        process = subprocess.Popen([KILN, "worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ipmi = receiver.wait_for("kiln.collector.cycle", timeout=60, **{"kiln.collector": "ipmi"})[0]
            bills = receiver.wait_for("kiln.bills.run", timeout=60)
            metrics = wait_http(f"http://127.0.0.1:{metrics_port}/metrics").text
        finally:
            stderr = stop(process)
            print(stderr)  # shown when the test fails
    assert ipmi.service == "kiln-worker" and ipmi.kind == "SPAN_KIND_INTERNAL"
    assert (ipmi.attributes["kiln.targets"], ipmi.attributes["kiln.targets.ok"]) == (1, 0)
    assert bills[0].attributes["kiln.period"] == time.strftime("%Y-%m", time.gmtime())
    assert 'kiln_collector_cycle_duration_seconds_count{collector="ipmi"} 1.0' in metrics
    assert "kiln_bills_run_duration_seconds_count 1.0" in metrics
    assert 'kiln_bills_run_duration_seconds_bucket{le="+Inf"} 1.0' in metrics
    lines = json_lines(stderr)
    failing = [line for line in lines if line["message"].startswith("ipmi: gpu-1 failing")]
    assert failing and failing[0]["node"] == "gpu-1" and failing[0]["level"] == "warning"
    assert BMC_PASSWORD not in stderr


def test_a_cli_bills_run_exports_its_span_before_it_exits(cli_db: dict[str, str]) -> None:
    period = time.strftime("%Y-%m", time.gmtime())
    with otlp_receiver() as receiver:
        result = run({**cli_db, "KILN_OTLP_ENDPOINT": receiver.url}, "bills", "run", "--period", period)
        assert result.returncode == 0, result.stderr
        assert receiver.requests >= 1  # sent before the process ended, not left in a batch
        runs = receiver.named("kiln.bills.run")
    assert [(s.service, s.attributes["kiln.period"], s.status) for s in runs] == [("kiln-cli", period, "STATUS_CODE_UNSET")]


def test_a_taken_metrics_port_does_not_stop_the_worker(cli_db: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**cli_db, "KILN_WORKER_METRICS_PORT": str(taken.getsockname()[1]), "KILN_LOG_FORMAT": "json"}
        process = subprocess.Popen([KILN, "worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        watchdog = threading.Timer(90, process.kill)  # a hung worker fails the test instead of hanging it
        watchdog.start()
        seen = []
        for line in process.stderr:  # until the IPMI cycle, run after the refused port, reports the node
            seen.append(line)
            if "gpu-1 failing" in line:
                break
        alive = process.poll() is None
        stderr = "".join(seen) + stop(process)
        watchdog.cancel()
    assert alive, stderr
    warning = next(line for line in json_lines(stderr) if line["message"].startswith("cannot serve metrics"))
    assert warning["level"] == "warning" and "running without" in warning["message"]
    assert any(line["message"].startswith("ipmi: gpu-1 failing") for line in json_lines(stderr))


@pytest.fixture
def traced_client(settings: Settings, engine: Engine) -> Iterator[tuple[TestClient, OtlpReceiver]]:
    """A TestClient on an app whose traces go to a loopback OTLP receiver."""
    with otlp_receiver() as receiver:
        config = settings.model_copy(update={"otlp_endpoint": receiver.url})
        try:
            with TestClient(create_app(config, engine=engine), raise_server_exceptions=False) as client:
                yield client, receiver
        finally:
            configure_tracing(None, "kiln-test")


def test_request_and_provisioning_spans_nest_under_the_callers_trace(
        traced_client: tuple[TestClient, OtlpReceiver], world: World) -> None:
    client, receiver = traced_client
    admin = world.headers("admin")
    node = client.post("/api/v1/nodes", json=node_payload(), headers=admin).json()
    caller = {"traceparent": f"00-{TRACEPARENT_TRACE}-{TRACEPARENT_SPAN}-01", "X-Request-ID": "req-otel-1"}
    started = client.post(f"/api/v1/nodes/{node['id']}/actions", json={"action": "manage"}, headers={**admin, **caller})
    assert started.status_code == 202 and started.headers["X-Request-ID"] == "req-otel-1"
    assert [o["status"] for o in wait_operations(client, admin)] == ["succeeded"]
    flush_traces()
    request = receiver.wait_for("POST /api/v1/nodes/{node_id}/actions")[0]
    assert (request.service, request.kind) == ("kiln-api", "SPAN_KIND_SERVER")
    assert (request.trace_id, request.parent_span_id) == (TRACEPARENT_TRACE, TRACEPARENT_SPAN)
    assert request.attributes["http.route"] == "/api/v1/nodes/{node_id}/actions"
    assert request.attributes["http.response.status_code"] == 202
    assert request.attributes["kiln.request_id"] == "req-otel-1"
    operation = receiver.wait_for("kiln.provision.manage")[0]
    assert (operation.trace_id, operation.parent_span_id) == (TRACEPARENT_TRACE, request.span_id)
    assert operation.attributes["kiln.node"] == node["name"] and operation.attributes["kiln.ok"] is True
    created = receiver.wait_for("POST /api/v1/nodes")[0]
    assert created.trace_id != TRACEPARENT_TRACE and created.parent_span_id == ""  # no traceparent: a trace of its own


def test_a_remembered_secret_that_is_a_key_word_does_not_unmask_a_value() -> None:
    from kiln import logs

    logs.remember_secret("password")  # e.g. a lab BMC's password; the tests' process keeps what it remembered
    assert logs.redact("ironic password=ir0nic-pw&x=1") == f"ironic {logs.REDACTED}={logs.REDACTED}&x=1"
