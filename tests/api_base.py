"""Generic API tests every Kiln resource inherits (like NetBox's APIViewTestCases).

A resource's test class declares its path and sample data; this base checks create / read /
update / delete, validation errors (422 naming the field), 401 without valid credentials,
403 for a role that may not write, and that a caller of tenant A can neither list, read,
change nor delete tenant B's objects (404, so existence does not leak). With the `database_url`
fixture's parameters, each check runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

from fastapi.testclient import TestClient
from httpx import Response
from sqlmodel import select

from kiln.db import utcnow
from kiln.models import ApiToken
from kiln.roles import Role
from tests.factories import World

PROBLEM_JSON = "application/problem+json"


def assert_problem(response: Response, status: int) -> dict[str, Any]:
    """Assert an RFC 9457 problem-details response with this status; return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"].startswith("urn:kiln:")
    return body


class ResourceAPITests:
    """Base class: set the attributes, implement `create_payload`, and the tests come for free."""

    path: ClassVar[str]
    reader: ClassVar[str] = "a_member"  # a caller of tenant A who may read A's objects but not change them
    update_payload: ClassVar[dict[str, Any]]
    invalid_payloads: ClassVar[list[tuple[dict[str, Any], str]]]  # (fields over a valid payload, field named)
    write_only_fields: ClassVar[frozenset[str]] = frozenset({"password"})
    supports_delete: ClassVar[bool] = True  # False: the resource keeps history; DELETE is 405

    def expected_fields(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The fields of a create payload that the created object must echo back."""
        return {k: v for k, v in payload.items() if k not in self.write_only_fields}

    def create_payload(self, world: World, tenant: str) -> dict[str, Any]:
        """A valid create payload for an object belonging to tenant `a` or `b`."""
        raise NotImplementedError

    def create_in(self, client: TestClient, world: World, tenant: str) -> dict[str, Any]:
        """Create an object of tenant `tenant` as infra-admin and return its body."""
        response = client.post(self.path, json=self.create_payload(world, tenant), headers=world.headers("admin"))
        assert response.status_code == 201, response.text
        return response.json()

    def own_object(self, client: TestClient, world: World) -> dict[str, Any]:
        """An object of tenant A, which the reader may see."""
        return self.create_in(client, world, "a")

    def foreign_object(self, client: TestClient, world: World) -> dict[str, Any]:
        """An object of tenant B (the reader is in tenant A)."""
        return self.create_in(client, world, "b")

    def _ids(self, client: TestClient, headers: dict[str, str]) -> set[Any]:
        response = client.get(self.path, headers=headers)
        assert response.status_code == 200, response.text
        return {item["id"] for item in response.json()}

    def test_create_read_update_delete(self, client: TestClient, world: World) -> None:
        admin = world.headers("admin")
        payload = self.create_payload(world, "a")
        created = client.post(self.path, json=payload, headers=admin)
        assert created.status_code == 201, created.text
        body = created.json()
        for key, value in self.expected_fields(payload).items():
            assert body[key] == value, key
        assert not self.write_only_fields & set(body), "write-only fields must never be returned"
        url = f"{self.path}/{body['id']}"
        assert client.get(url, headers=admin).json() == body
        assert body["id"] in self._ids(client, admin)
        updated = client.patch(url, json=self.update_payload, headers=admin)
        assert updated.status_code == 200, updated.text
        for key, value in self.update_payload.items():
            assert updated.json()[key] == value
        assert client.get(url, headers=admin).json() == updated.json()
        if not self.supports_delete:
            assert_problem(client.delete(url, headers=admin), 405)
            return
        assert client.delete(url, headers=admin).status_code == 204
        assert_problem(client.get(url, headers=admin), 404)

    def test_invalid_input_is_422_naming_the_field(self, client: TestClient, world: World) -> None:
        admin = world.headers("admin")
        before = self._ids(client, admin)
        for overrides, field in self.invalid_payloads + [({"no_such_field": 1}, "no_such_field")]:
            payload = {**self.create_payload(world, "a"), **overrides}
            body = assert_problem(client.post(self.path, json=payload, headers=admin), 422)
            assert field in [error["field"] for error in body["errors"]], (overrides, body)
        assert self._ids(client, admin) == before, "a rejected request must write nothing"

    def test_missing_or_bad_credentials_are_401(self, client: TestClient, world: World) -> None:
        obj = self.create_in(client, world, "a")
        url = f"{self.path}/{obj['id']}"
        expired = world.make_caller(Role(world.callers[self.reader].user.role), [world.a.slug])
        row = world.session.exec(select(ApiToken).where(ApiToken.user_id == expired.user.id)).one()
        row.expires_at = utcnow() - timedelta(seconds=1)
        world.session.add(row)
        world.session.commit()
        bad_headers = [{}, {"Authorization": "Bearer kiln_not-a-real-token"}, {"Authorization": "Basic eDp5"}, expired.headers]
        for headers in bad_headers:
            assert_problem(client.get(self.path, headers=headers), 401)
            assert_problem(client.get(url, headers=headers), 401)
            assert_problem(client.post(self.path, json=self.create_payload(world, "a"), headers=headers), 401)
            response = client.patch(url, json=self.update_payload, headers=headers)
            assert_problem(response, 401)
            assert response.headers["www-authenticate"] == "Bearer"

    def test_wrong_role_is_403_and_writes_nothing(self, client: TestClient, world: World) -> None:
        admin, reader = world.headers("admin"), world.headers(self.reader)
        obj = self.own_object(client, world)
        url = f"{self.path}/{obj['id']}"
        before = self._ids(client, admin)
        assert_problem(client.post(self.path, json=self.create_payload(world, "a"), headers=reader), 403)
        assert client.get(url, headers=reader).status_code == 200, "the reader may read its own tenant's object"
        assert_problem(client.patch(url, json=self.update_payload, headers=reader), 403)
        assert_problem(client.delete(url, headers=reader), 403 if self.supports_delete else 405)
        assert self._ids(client, admin) == before
        assert client.get(url, headers=admin).json() == obj

    def test_other_tenants_objects_are_invisible(self, client: TestClient, world: World) -> None:
        foreign = self.foreign_object(client, world)
        url = f"{self.path}/{foreign['id']}"
        for name in (self.reader, "a_admin"):
            headers = world.headers(name)
            assert foreign["id"] not in self._ids(client, headers)
            assert_problem(client.get(url, headers=headers), 404)
            assert_problem(client.patch(url, json=self.update_payload, headers=headers), 404)
            if self.supports_delete:
                assert_problem(client.delete(url, headers=headers), 404)
        assert client.get(url, headers=world.headers("admin")).json() == foreign
