"""deploy/install.sh run for real into a scratch root (twice: the second run changes nothing),
and its systemd units checked by `systemd-analyze verify` and `security` inside that root,
where the units' ExecStart binary is the real `kiln` script of the venv the install made."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kiln.settings import MIN_SECRET_KEY_LENGTH, read_config_file
from tests.peers.harness import missing_peer

REPO = Path(__file__).parent.parent
INSTALL = REPO / "deploy" / "install.sh"
UNITS = ("kiln-api.service", "kiln-worker.service")
SOURCE_PARTS = ("pyproject.toml", "README.md", "kiln", "fleet", "collectors", "metering", "dashboards", "deploy")
# Offline-ish and quick: only Kiln itself goes into the scratch venv (its dependencies are
# what scripts/bootstrap.sh installs everywhere already); the build backend comes from PyPI.
PIP_ARGS = "--no-deps"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="install.sh needs root (useradd --prefix, chown)")


def scratch_root(path: Path) -> Path:
    """An empty target system: root's entries in /etc/passwd etc. and the OS's systemd units."""
    for name in ("passwd", "group", "shadow", "gshadow"):
        (path / "etc").mkdir(parents=True, exist_ok=True)
        lines = [line for line in Path(f"/etc/{name}").read_text().splitlines(keepends=True)
                 if line.startswith("root:")]
        (path / "etc" / name).write_text("".join(lines))
    shutil.copytree("/usr/lib/systemd/system", path / "usr/lib/systemd/system", symlinks=True)
    return path


def source_copy(path: Path) -> Path:
    """A frozen copy of the source tree (others may edit the working tree while tests run)."""
    for part in SOURCE_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, path / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, path / part)
    return path


def install(root: Path, source: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run install.sh into `root`."""
    return subprocess.run(["bash", str(INSTALL), "--root", str(root), "--source", str(source),
                           "--pip-args", PIP_ARGS, *args], capture_output=True, text=True, timeout=300)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root (the seeded OS units aside): mode, owner, size, mtime, link target."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if rel.startswith("usr/lib/systemd/system"):
                continue
            info = path.lstat()
            seen[rel] = (info.st_mode, info.st_uid, info.st_gid, info.st_size, info.st_mtime_ns,
                         os.readlink(path) if path.is_symlink() else None)
    return seen


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A scratch root with Kiln installed once: (root, source, install.sh's output)."""
    root = scratch_root(tmp_path_factory.mktemp("root"))
    source = source_copy(tmp_path_factory.mktemp("source"))
    result = install(root, source)
    assert result.returncode == 0, result.stdout + result.stderr
    return root, source, result.stdout


def kiln_ids(root: Path) -> tuple[int, int]:
    """uid and gid of the kiln user in the scratch root."""
    (line,) = [line for line in (root / "etc/passwd").read_text().splitlines() if line.startswith("kiln:")]
    fields = line.split(":")
    assert fields[6] == "/usr/sbin/nologin" and fields[5] == "/var/lib/kiln"
    return int(fields[2]), int(fields[3])


def test_first_run_installs_everything(installed: tuple[Path, Path, str]) -> None:
    root, _, output = installed
    uid, gid = kiln_ids(root)
    assert uid < 1000  # a system user
    expected = {"opt/kiln": (0o755, 0, 0), "etc/kiln": (0o750, 0, gid), "var/lib/kiln": (0o750, uid, gid),
                "etc/kiln/kiln.toml": (0o600, uid, gid), "usr/local/bin/kiln": (0o755, 0, 0),
                "etc/systemd/system/kiln-api.service": (0o644, 0, 0)}
    for rel, (mode, owner, group) in expected.items():
        info = (root / rel).stat()
        assert (info.st_mode & 0o7777, info.st_uid, info.st_gid) == (mode, owner, group), rel
    assert os.access(root / "opt/kiln/venv/bin/kiln", os.X_OK)
    for unit in UNITS:
        assert (root / "etc/systemd/system/multi-user.target.wants" / unit).is_symlink()
    config = read_config_file(root / "etc/kiln/kiln.toml")  # Kiln's own parser accepts it
    assert config.values["data_dir"] == "/var/lib/kiln" and "database_url" not in config.values
    assert len(config.values["secret_key"]) >= MIN_SECRET_KEY_LENGTH
    assert config.values["secret_key"] not in output  # never printed
    assert re.search(r"^changed: +created system user kiln", output, re.M)
    assert output.rstrip().endswith("change(s). First admin: kiln users create admin --role infra-admin")


def test_second_run_changes_nothing(installed: tuple[Path, Path, str]) -> None:
    root, source, _ = installed
    before = snapshot(root)
    again = install(root, source)
    assert again.returncode == 0, again.stderr
    assert snapshot(root) == before
    assert not re.search(r"^(changed|would):", again.stdout, re.M)
    assert again.stdout.rstrip().endswith("Kiln is installed; nothing changed")


def test_a_wrong_config_mode_is_repaired_and_the_key_kept(installed: tuple[Path, Path, str]) -> None:
    root, source, _ = installed
    config = root / "etc/kiln/kiln.toml"
    key_before = read_config_file(config).values["secret_key"]
    config.chmod(0o644)
    result = install(root, source)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^changed: +fixed mode/owner of /etc/kiln/kiln.toml", result.stdout, re.M)
    assert config.stat().st_mode & 0o777 == 0o600
    assert read_config_file(config).values["secret_key"] == key_before


def test_dry_run_changes_nothing(installed: tuple[Path, Path, str], tmp_path: Path) -> None:
    fresh = scratch_root(tmp_path / "fresh")
    before = snapshot(fresh)
    result = install(fresh, installed[1], "--dry-run")
    assert result.returncode == 0, result.stderr
    assert snapshot(fresh) == before
    assert re.search(r"^would: +created system user kiln", result.stdout, re.M)
    assert re.search(r"^dry run: 1[0-9] change\(s\) would be made$", result.stdout, re.M)
    on_installed = install(installed[0], installed[1], "--dry-run")
    assert on_installed.stdout.rstrip().endswith("dry run: 0 change(s) would be made")


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    """The real systemd-analyze (Debian's systemd package)."""
    path = shutil.which("systemd-analyze")
    if path is None:
        missing_peer("systemd-analyze", "not installed (apt-get install systemd)")
    return path


def test_units_verify_in_the_scratch_root(installed: tuple[Path, Path, str], systemd_analyze: str) -> None:
    root = installed[0]
    result = subprocess.run([systemd_analyze, "verify", f"--root={root}", *UNITS], capture_output=True, text=True)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    for unit in UNITS:
        security = subprocess.run([systemd_analyze, "security", "--offline=yes", f"--root={root}", "--threshold=20",
                                   "--no-pager", unit], capture_output=True, text=True)
        assert security.returncode == 0, security.stdout[-2000:]
        assert re.search(r"Overall exposure level for .*: [01]\.\d OK", security.stdout)


def test_verify_catches_broken_units(installed: tuple[Path, Path, str], systemd_analyze: str) -> None:
    """The checks above can fail: a typo, a bad value, a missing binary, no hardening."""
    root = installed[0]
    text = (root / "etc/systemd/system/kiln-api.service").read_text()
    broken = root / "etc/systemd/system/kiln-broken.service"
    broken.write_text(text.replace("ProtectSystem=strict", "ProtectSystem=sometimes")
                      .replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
                      .replace("ExecStart=/opt/kiln/venv/bin/kiln serve", "ExecStart=/opt/kiln/venv/bin/kilm serve"))
    bare = root / "etc/systemd/system/kiln-bare.service"
    bare.write_text("[Service]\nExecStart=/opt/kiln/venv/bin/kiln worker\n")
    try:
        result = subprocess.run([systemd_analyze, "verify", f"--root={root}", broken.name],
                                capture_output=True, text=True)
        output = result.stdout + result.stderr
        assert "Failed to parse protect system value" in output
        assert "Unknown key 'NoNewPrivilege'" in output
        assert "kilm is not executable" in output
        security = subprocess.run([systemd_analyze, "security", "--offline=yes", f"--root={root}", "--threshold=20",
                                   "--no-pager", bare.name], capture_output=True, text=True)
        assert security.returncode != 0
    finally:
        broken.unlink()
        bare.unlink()


def test_units_are_hardened_as_documented() -> None:
    for unit in UNITS:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # keys are case-sensitive
        parser.read(REPO / "deploy" / "systemd" / unit)
        service = parser["Service"]
        assert (service["User"], service["Group"]) == ("kiln", "kiln")
        assert service["ProtectSystem"] == "strict" and service["ReadWritePaths"] == "/var/lib/kiln"
        assert service["NoNewPrivileges"] == service["PrivateTmp"] == "yes"
        assert service["Restart"] == "on-failure"
        assert service["Environment"] == "KILN_CONFIG=/etc/kiln/kiln.toml"
        assert service["ExecStart"].startswith("/opt/kiln/venv/bin/kiln ")


@pytest.mark.parametrize(("args", "message"), [
    (["--database", "mysql"], "--database must be sqlite or postgresql, not 'mysql'"),
    (["--db-url", "mysql://x@y/z"], "--db-url must be a postgresql:// URL"),
    (["--python", "/bin/false"], "Kiln needs Python 3.11"),
    (["--frobnicate"], "unknown option --frobnicate"),
    (["--database", "postgresql"], "--database postgresql creates the database on this machine: not with --root"),
])
def test_bad_options_are_refused(installed: tuple[Path, Path, str], tmp_path: Path, args: list[str],
                                 message: str) -> None:
    fresh = scratch_root(tmp_path / "fresh")
    before = snapshot(fresh)
    result = install(fresh, installed[1], "--dry-run", *args)
    assert result.returncode == 1
    assert f"install.sh: error: {message}" in result.stderr
    assert snapshot(fresh) == before


def test_an_existing_database_url_goes_into_the_config(installed: tuple[Path, Path, str], tmp_path: Path) -> None:
    root = scratch_root(tmp_path / "pg")
    shutil.copytree(installed[0] / "opt", root / "opt", symlinks=True)  # the same Kiln: no second pip install
    result = install(root, installed[1], "--db-url", "postgresql://kiln:s3cret@db.example:5432/kiln")
    assert result.returncode == 0, result.stderr
    assert read_config_file(root / "etc/kiln/kiln.toml").values["database_url"] == (
        "postgresql://kiln:s3cret@db.example:5432/kiln")
    assert "s3cret" not in result.stdout
    assert re.search(r"^unchanged: Kiln .* in /opt/kiln/venv$", result.stdout, re.M)
