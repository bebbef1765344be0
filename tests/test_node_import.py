"""Bulk import rules (CSV and YAML) with the fake provisioner: row numbers, duplicates,
`skip_invalid`, idempotent re-import, tags and GPUs; and the CLI's side of the contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, select

from fleet.importer import ImportReport, InvalidImport, import_nodes
from fleet.models import Gpu, Node, NodeEvent, NodeTag
from fleet.provisioning.registry import Drivers
from kiln.auth import Principal
from kiln.errors import BadRequest
from kiln.security import SecretBox
from kiln.settings import Settings
from tests.cli_helpers import base_env
from tests.cli_helpers import run as kiln
from tests.conftest import TEST_SECRET_KEY

HEADER = "name,provisioner,bmc_address,bmc_username,bmc_password,boot_mac,resource_class,rack,tags,ironic_driver"


def row(n: int, **changes: str) -> str:
    """A valid CSV line (fake provisioner) for node `imp-N`, with some columns changed."""
    values = {
        "name": f"imp-{n}", "provisioner": "fake", "bmc_address": f"ipmi://10.9.0.{n}:623", "bmc_username": "admin",
        "bmc_password": f"pw-{n}", "boot_mac": f"52:54:00:09:00:{n:02x}", "resource_class": "gpu.h100",
        "rack": "r7", "tags": "train;h100", "ironic_driver": "ipmi",
    }
    values.update(changes)
    return ",".join(values[c] for c in HEADER.split(","))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def csv_file(tmp_path: Path, *lines: str, header: str = HEADER, name: str = "nodes.csv") -> Path:
    return write(tmp_path, name, "\n".join([header, *lines]) + "\n")


@pytest.fixture
def run_import(engine: Engine, settings: Settings):
    """`import_nodes` on the test database with the fake provisioner, as the local operator."""
    drivers, box = Drivers(settings), SecretBox(TEST_SECRET_KEY)

    def run(path: Path, **options) -> ImportReport:
        return import_nodes(engine, path, Principal.system("test"), drivers, box, **options)

    return run


def nodes_in(engine: Engine) -> dict[str, Node]:
    with Session(engine) as session:
        return {n.name: n for n in session.exec(select(Node)).all()}


def results(report: ImportReport) -> list[tuple[int, str, str]]:
    return [(r.row, r.name, r.status) for r in report.rows]


def test_csv_import_enrolls_nodes_with_tags_gpus_and_encrypted_passwords(tmp_path: Path, run_import,
                                                                        engine: Engine) -> None:
    header = HEADER + ",ipmi_cipher_suite,gpu_model,gpu_count,gpu_memory_mib"
    path = csv_file(
        tmp_path,
        row(1) + ",17,NVIDIA H100 80GB HBM3,2,81559",
        row(2, tags=" infer ; ; b200 ", boot_mac="52-54-00-09-00-AA") + ",,,,",
        header=header,
    )
    report = run_import(path)
    assert results(report) == [(2, "imp-1", "created"), (3, "imp-2", "created")] and report.ok
    nodes = nodes_in(engine)
    one, two = nodes["imp-1"], nodes["imp-2"]
    assert (one.provisioner, one.bmc_driver, one.hardware_type, one.ipmi_cipher_suite) == ("fake", "ipmi", "ipmi", 17)
    assert (one.resource_class, one.rack, one.provision_state) == ("gpu.h100", "r7", "enroll")
    assert one.external_id and one.external_id.startswith("fake-")
    assert two.boot_mac == "52:54:00:09:00:aa" and two.ipmi_cipher_suite is None
    assert SecretBox(TEST_SECRET_KEY).decrypt(one.bmc_password_encrypted) == "pw-1"
    assert "pw-1" not in one.bmc_password_encrypted
    with Session(engine) as session:
        tags = {(t.node_id, t.tag) for t in session.exec(select(NodeTag)).all()}
        gpus = session.exec(select(Gpu).order_by(Gpu.node_id, Gpu.index)).all()
    assert tags == {(one.id, "train"), (one.id, "h100"), (two.id, "infer"), (two.id, "b200")}
    assert [(g.node_id, g.index, g.model, g.memory_mib) for g in gpus] == [
        (one.id, 0, "NVIDIA H100 80GB HBM3", 81559), (one.id, 1, "NVIDIA H100 80GB HBM3", 81559)
    ]


def test_the_ipmi_privilege_column_is_checked_and_kept(tmp_path: Path, run_import, engine: Engine) -> None:
    header = HEADER + ",ipmi_privilege"
    with pytest.raises(InvalidImport) as refused:
        run_import(csv_file(tmp_path, row(1) + ",admin", row(2) + ",root", header=header, name="bad.csv"))
    assert "row 3 (imp-2): ipmi_privilege: Input should be 'user', 'operator' or 'admin'" in str(refused.value)
    assert nodes_in(engine) == {}
    good = run_import(csv_file(tmp_path, row(1) + ",admin", row(2) + ",", header=header))
    assert good.ok
    assert {name: node.ipmi_privilege for name, node in nodes_in(engine).items()} == {"imp-1": "admin", "imp-2": None}


def test_reimporting_the_same_file_changes_nothing(tmp_path: Path, run_import, engine: Engine) -> None:
    path = csv_file(tmp_path, row(1), row(2, tags="b;a;a"))
    assert [r.status for r in run_import(path).rows] == ["created", "created"]
    before = {name: (n.id, n.external_id, n.updated_at) for name, n in nodes_in(engine).items()}
    again = run_import(path)
    assert results(again) == [(2, "imp-1", "unchanged"), (3, "imp-2", "unchanged")] and again.ok
    assert {name: (n.id, n.external_id, n.updated_at) for name, n in nodes_in(engine).items()} == before
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(NodeEvent)).one() == 2  # one `enrolled` each


def test_every_invalid_row_is_reported_with_its_line_and_nothing_is_imported(tmp_path: Path, run_import,
                                                                              engine: Engine) -> None:
    path = csv_file(
        tmp_path,
        row(1),                                        # line 2: valid
        row(2, name="Bad Name"),                       # line 3
        row(3, bmc_address="http://10.9.0.3"),         # line 4
        "",                                            # line 5: blank, skipped but counted
        row(4, boot_mac="52:54:00:zz:00:04"),          # line 6
        row(5, provisioner="maas"),                    # line 7
        row(6, name=""),                               # line 8
        row(7, name="imp-1"),                          # line 9: duplicate name (line 2)
        row(8, boot_mac="52:54:00:09:00:01"),          # line 10: duplicate MAC (line 2)
        row(9, tags="ok;has/slash;tag!"),          # line 11
        row(10),                                       # line 12: valid
    )
    with pytest.raises(InvalidImport) as refused:
        run_import(path)
    problems = {p.row: (p.name, p.message) for p in refused.value.problems}
    assert sorted(problems) == [3, 4, 6, 7, 8, 9, 10, 11]
    assert problems[3][0] == "Bad Name" and problems[3][1].startswith("name: ")
    assert problems[4][1].startswith("bmc_address: unsupported BMC address 'http://10.9.0.3'")
    assert problems[6][1].startswith("boot_mac: ")
    assert problems[7][1].startswith("provisioner: ")
    assert problems[8] == ("", "name: Field required")
    assert problems[9] == ("imp-1", "duplicate name: also on row 2")
    assert problems[10] == ("imp-8", "duplicate boot_mac 52:54:00:09:00:01: also on row 2")
    assert problems[11][1].startswith("tags.2: ")
    detail = refused.value.detail
    assert "8 invalid row(s), nothing imported" in detail and "row 4 (imp-3): bmc_address" in detail
    assert "\n" not in detail
    assert [e["row"] for e in refused.value.extensions["errors"]] == [3, 4, 6, 7, 8, 9, 10, 11]
    assert nodes_in(engine) == {}


def test_skip_invalid_enrolls_the_valid_rows_and_reports_the_others(tmp_path: Path, run_import, engine: Engine) -> None:
    path = csv_file(tmp_path, row(1), row(2, bmc_address="ipmi://10.9.0.2:99999"), row(3))
    report = run_import(path, skip_invalid=True)
    assert results(report) == [(2, "imp-1", "created"), (3, "imp-2", "invalid"), (4, "imp-3", "created")]
    assert "invalid port" in report.rows[1].message and not report.ok
    assert sorted(nodes_in(engine)) == ["imp-1", "imp-3"]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("name,provisioner,bmc_address,bmc_username", "line 1: missing column(s) bmc_password"),
        (HEADER + ",colour", "line 1: unknown column(s) colour"),
        ("name,provisioner,bmc_username,bmc_password,flavour",
         "missing column(s) bmc_address; unknown column(s) flavour"),
    ],
)
def test_missing_or_unknown_columns_are_refused(tmp_path: Path, run_import, engine: Engine, header: str,
                                                message: str) -> None:
    with pytest.raises(BadRequest) as refused:
        run_import(csv_file(tmp_path, "x,fake,ipmi://10.0.0.1,a,b", header=header))
    assert message in refused.value.detail
    assert nodes_in(engine) == {}


def test_duplicates_and_changes_against_the_database(tmp_path: Path, run_import, engine: Engine) -> None:
    assert run_import(csv_file(tmp_path, row(1), row(2), row(5), name="first.csv")).ok
    path = csv_file(
        tmp_path,
        row(1),                                        # line 2: unchanged
        row(2, rack="r8"),                             # line 3: changed definition
        row(3, boot_mac="52:54:00:09:00:05"),          # line 4: imp-5's MAC
        row(4),                                        # line 5: new
        row(1, ironic_driver="fake-hardware"),         # line 6: imp-1 again, other hardware type
        name="second.csv",
    )
    with pytest.raises(InvalidImport) as refused:
        run_import(path)
    problems = {p.row: p.message for p in refused.value.problems}
    assert sorted(problems) == [3, 4, 6]
    assert "exists with a different definition" in problems[3]
    assert problems[4] == "boot_mac 52:54:00:09:00:05 already belongs to node 'imp-5'"
    assert problems[6] == "duplicate name: also on row 2"
    assert sorted(nodes_in(engine)) == ["imp-1", "imp-2", "imp-5"]

    changed = csv_file(tmp_path, row(1, ironic_driver="fake-hardware"), row(2, tags="train"), name="third.csv")
    report = run_import(changed, skip_invalid=True)
    assert [r.status for r in report.rows] == ["invalid", "invalid"], report.rows
    assert all("different definition" in r.message for r in report.rows)
    assert nodes_in(engine)["imp-1"].hardware_type == "ipmi"


def test_gpu_columns_are_checked(tmp_path: Path, run_import, engine: Engine) -> None:
    header = HEADER + ",gpu_model,gpu_count"
    path = csv_file(
        tmp_path,
        row(1) + ",,4",                                # line 2: count without model
        row(2) + ",NVIDIA B200,eight",                 # line 3: not a number
        row(3) + ",NVIDIA B200,",                      # line 4: model without count
        row(4) + ",NVIDIA B200,65",                    # line 5: more GPUs than indexes allow
        row(5) + ",NVIDIA B200,8",                     # line 6: valid
        header=header,
    )
    with pytest.raises(InvalidImport) as refused:
        run_import(path)
    problems = {p.row: p.message for p in refused.value.problems}
    assert sorted(problems) == [2, 3, 4, 5]
    assert problems[2] == "gpu_count needs gpu_model"
    assert "gpu_count" in problems[3] and "eight" in problems[3]
    assert "gpu_model needs gpu_count" in problems[4]
    assert problems[5].startswith("gpus.64.index: ")
    assert nodes_in(engine) == {}


def test_csv_rows_with_extra_fields_are_invalid(tmp_path: Path, run_import, engine: Engine) -> None:
    # An unquoted comma (here inside tags) shifts every later column: refuse, never drop values.
    path = csv_file(tmp_path, row(1), row(2, tags="train,h100"))
    with pytest.raises(InvalidImport) as refused:
        run_import(path)
    (problem,) = refused.value.problems
    assert (problem.row, problem.name) == (3, "imp-2")
    assert "11 fields" in problem.message and "10 columns" in problem.message
    assert nodes_in(engine) == {}


def test_a_utf8_bom_from_spreadsheets_is_accepted(tmp_path: Path, run_import, engine: Engine) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(("\ufeff" + HEADER + "\r\n" + row(1) + "\r\n").encode())
    assert results(run_import(path)) == [(2, "imp-1", "created")]
    assert nodes_in(engine)["imp-1"].ipmi_cipher_suite is None


YAML_NODES = """\
# GPU servers of rack r7
nodes:
  - name: yml-1
    provisioner: fake
    bmc_address: ipmi://10.9.1.1
    bmc_username: admin
    bmc_password: secret-1
    boot_mac: 52:54:00:12:34:56
    rack: r7
    tags: [train, h100]
    ipmi_cipher_suite: 3
    facts: {cpu_model: AMD EPYC 9454, cpu_cores: 96}
    gpus:
      - {index: 0, model: NVIDIA H100 80GB HBM3, uuid: GPU-aaaa}
      - {index: 1, model: NVIDIA H100 80GB HBM3, uuid: GPU-bbbb}
  - name: yml-2
    provisioner: fake
    bmc_address: redfish://10.9.1.2/redfish/v1/Systems/1
    bmc_username: admin
    bmc_password: 12345
    tags: infer;b200
    gpu_model: NVIDIA B200
    gpu_count: 2
"""


def test_yaml_with_a_nodes_root(tmp_path: Path, run_import, engine: Engine) -> None:
    report = run_import(write(tmp_path, "nodes.yaml", YAML_NODES))
    assert results(report) == [(3, "yml-1", "created"), (16, "yml-2", "created")]
    nodes = nodes_in(engine)
    one, two = nodes["yml-1"], nodes["yml-2"]
    # YAML 1.1 reads 52:54:00:12:34:56 as a base-60 integer and 12345 as a number: Kiln keeps the text.
    assert one.boot_mac == "52:54:00:12:34:56"
    assert SecretBox(TEST_SECRET_KEY).decrypt(two.bmc_password_encrypted) == "12345"
    assert one.facts == {"cpu_model": "AMD EPYC 9454", "cpu_cores": 96} and one.ipmi_cipher_suite == 3
    assert (two.bmc_driver, two.bmc_address) == ("redfish", "redfish://10.9.1.2/redfish/v1/Systems/1")
    with Session(engine) as session:
        tags = {(t.node_id, t.tag) for t in session.exec(select(NodeTag)).all()}
        gpus = {(g.node_id, g.index, g.model, g.uuid) for g in session.exec(select(Gpu))}
    assert tags == {(one.id, "train"), (one.id, "h100"), (two.id, "infer"), (two.id, "b200")}
    assert gpus == {(one.id, 0, "NVIDIA H100 80GB HBM3", "GPU-aaaa"), (one.id, 1, "NVIDIA H100 80GB HBM3", "GPU-bbbb"),
                    (two.id, 0, "NVIDIA B200", None), (two.id, 1, "NVIDIA B200", None)}
    assert [r.status for r in run_import(write(tmp_path, "again.yml", YAML_NODES)).rows] == ["unchanged", "unchanged"]


def test_yaml_list_root_reports_invalid_entries_by_line(tmp_path: Path, run_import, engine: Engine) -> None:
    text = """\
- {name: yml-a, provisioner: fake, bmc_address: "ipmi://10.9.2.1"}
- name: yml-b
  provisioner: fake
  bmc_address: ipmi://10.9.2.2:70000
- just a string
-
  name: yml-a
  provisioner: fake
  bmc_address: ipmi://10.9.2.3
- {name: yml-c, provisioner: fake, bmc_address: "ipmi://10.9.2.4", colour: blue}
- {name: yml-d, provisioner: fake, bmc_address: "ipmi://10.9.2.5"}
"""
    with pytest.raises(InvalidImport) as refused:
        run_import(write(tmp_path, "list.yml", text))
    problems = {p.row: (p.name, p.message) for p in refused.value.problems}
    assert sorted(problems) == [2, 5, 7, 10]
    assert problems[2][0] == "yml-b" and "invalid port" in problems[2][1]
    assert problems[5] == ("", "each entry must be a mapping of node fields")
    assert problems[7] == ("yml-a", "duplicate name: also on row 1")
    assert problems[10] == ("yml-c", "colour: Extra inputs are not permitted")
    assert nodes_in(engine) == {}
    report = run_import(write(tmp_path, "list.yml", text), skip_invalid=True)
    assert [(r.row, r.status) for r in report.rows if r.status == "created"] == [(1, "created"), (11, "created")]
    assert sorted(nodes_in(engine)) == ["yml-a", "yml-d"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.yaml", "nodes: [unclosed", "is not valid YAML"),
        ("map.yaml", "servers:\n  - name: x\n", "expected a list of nodes (or a mapping with key 'nodes')"),
        ("empty.yml", "", "expected a list of nodes"),
        ("nodes.json", "[]", "import files must end in .csv, .yaml or .yml"),
    ],
)
def test_unreadable_files_are_refused(tmp_path: Path, run_import, name: str, text: str, message: str) -> None:
    with pytest.raises(BadRequest) as refused:
        run_import(write(tmp_path, name, text))
    assert message in refused.value.detail and "\n" not in refused.value.detail


# -- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def cli_env(engine: Engine, tmp_path: Path) -> dict[str, str]:
    return base_env(tmp_path, KILN_DATABASE_URL=engine.url.render_as_string(hide_password=False),
                    KILN_SECRET_KEY=TEST_SECRET_KEY)


def test_cli_import_contract(tmp_path: Path, cli_env: dict[str, str]) -> None:
    path = csv_file(tmp_path, row(1), row(2, bmc_address="ipmi://"), row(3))
    refused = kiln(cli_env, "nodes", "import", str(path))
    assert refused.returncode == 1 and refused.stdout.strip() == ""
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith(f"kiln: error: {path}: 1 invalid row(s)")
    assert "row 3 (imp-2): bmc_address: BMC address 'ipmi://' has no valid host" in refused.stderr
    assert json.loads(kiln(cli_env, "nodes", "list", "-o", "json").stdout) == []

    skipped = kiln(cli_env, "nodes", "import", str(path), "--skip-invalid", "--output", "json")
    assert skipped.returncode == 1, "an import that left rows out must not look like full success"
    assert [(r["row"], r["name"], r["status"]) for r in json.loads(skipped.stdout)] == [
        (2, "imp-1", "created"), (3, "imp-2", "invalid"), (4, "imp-3", "created")
    ]
    listed = json.loads(kiln(cli_env, "nodes", "list", "--output", "json").stdout)
    assert [(n["name"], n["provision_state"], n["tags"]) for n in listed] == [
        ("imp-1", "enroll", ["h100", "train"]), ("imp-3", "enroll", ["h100", "train"])
    ]
    assert all("bmc_password" not in n and n["bmc_password_set"] for n in listed)

    valid = csv_file(tmp_path, row(1), row(3), name="valid.csv")
    again = kiln(cli_env, "nodes", "import", str(valid))
    assert again.returncode == 0, again.stderr
    assert "0 created, 2 unchanged, 0 invalid, 0 failed" in again.stdout

    missing = kiln(cli_env, "nodes", "import", str(tmp_path / "nowhere.csv"))
    assert missing.returncode == 1 and missing.stderr.startswith("kiln: error: cannot read ")
    assert missing.stderr.count("\n") == 1
