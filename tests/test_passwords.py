"""Local password policy (length, the shipped common-password list) and argon2 parameters as
settings, with old hashes upgraded at the next sign-in."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import Engine, func
from sqlmodel import Session, select

import kiln
from kiln.app import create_app
from kiln.models import User
from kiln.passwords import common_passwords
from kiln.settings import Settings
from tests.api_base import assert_problem
from tests.factories import World

DATA = Path(kiln.__file__).parent / "data"


def test_the_shipped_list_is_djangos_file_unedited() -> None:
    raw = (DATA / "common-passwords.txt.gz").read_bytes()
    readme = (DATA / "README.md").read_text()
    assert hashlib.sha256(raw).hexdigest() in readme  # the digest cited beside it
    lines = gzip.decompress(raw).decode().splitlines()
    assert len(lines) == len(common_passwords()) == 19640 and "1qaz2wsx3edc" in common_passwords()


def test_short_and_common_passwords_are_refused_and_nothing_is_created(client: TestClient, world: World) -> None:
    admin = world.headers("admin")

    def create(password: str):
        return client.post("/api/v1/users", headers=admin, json={
            "username": "carol", "role": "tenant-member", "tenants": ["tenant-a"], "password": password})

    short = assert_problem(create("tiny pass"), 422)
    assert short["errors"] == [{"field": "password", "message": "must be at least 12 characters"}]
    for common in ("1qaz2wsx3edc", "Q1W2E3R4T5Y6"):  # on the list, whatever the case
        problem = assert_problem(create(common), 422)
        assert problem["errors"][0]["field"] == "password" and "most common passwords" in problem["errors"][0]["message"]
    world.session.expire_all()
    assert world.session.exec(select(func.count()).select_from(User).where(User.username == "carol")).one() == 0
    assert create("correct horse battery").status_code == 201
    me = client.post("/api/v1/auth/token", json={"username": "carol", "password": "correct horse battery"}).json()
    bearer = {"Authorization": f"Bearer {me['token']}"}
    user_id = client.get("/api/v1/users/me", headers=bearer).json()["id"]
    changed = assert_problem(client.patch(f"/api/v1/users/{user_id}", headers=bearer, json={"password": "password1234"}), 422)
    assert "most common passwords" in changed["detail"]


def test_argon2_parameters_are_settings_and_old_hashes_are_upgraded(settings: Settings, engine: Engine,
                                                                    world: World) -> None:
    light = settings.model_copy(update={"argon2_time_cost": 1, "argon2_memory_kib": 8192, "argon2_parallelism": 1})
    with TestClient(create_app(light, engine=engine)) as client:
        assert client.post("/api/v1/users", headers=world.headers("admin"), json={
            "username": "carol", "role": "finance", "password": "correct horse battery"}).status_code == 201

    def stored_hash() -> str:
        with Session(engine) as session:
            return session.exec(select(User.password_hash).where(User.username == "carol")).one()

    assert "$m=8192,t=1,p=1$" in stored_hash()
    with TestClient(create_app(settings, engine=engine)) as client:  # the defaults: 64 MiB, 3 passes, 4 lanes
        assert client.post("/api/v1/auth/token", json={"username": "carol", "password": "correct horse battery"}
                           ).status_code == 201
    assert "$m=65536,t=3,p=4$" in stored_hash()
