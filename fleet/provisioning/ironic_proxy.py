"""openstacksdk's baremetal proxy, used without the requests and CPU a bulk action does not need.

A bulk action over hundreds of nodes polls every node many times while Ironic, one process,
is the bottleneck (and the client shares the machine's CPUs with it). Per call the SDK does
more than Kiln uses:

- after a provision-state or maintenance change it reads the whole node back (a GET of every
  field, which Kiln's next poll makes needless): `NotReadBack` does not;
- a `get_node` builds SDK `Node` resources (about a hundred attributes each), twice the CPU of
  the request itself: `get_fields` reads Ironic's JSON instead, through the same proxy (same
  session, authentication, microversion and error types).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from openstack import exceptions, resource, utils
from openstack.baremetal.v1.node import Node


class NotReadBack(Node):
    """The SDK's Node whose provision-state and maintenance changes return without reading the
    whole node back (`fetch`)."""

    id = resource.Body("uuid", alternate_id=True)  # the SDK looks for its alternate id on the class itself

    def fetch(self, session: Any, *args: Any, **kwargs: Any) -> NotReadBack:
        """This node as it is: nothing is read from Ironic."""
        return self


def get_fields(proxy: Any, ident: str, fields: list[str]) -> SimpleNamespace:
    """GET /v1/nodes/{ident}?fields=… at the SDK Node's microversion: the node's `fields` under
    the SDK's attribute names (`uuid` as `id`, `maintenance` as `is_maintenance`), errors raised
    as the SDK's `get_node` raises them."""
    response = proxy.get(utils.urljoin(Node.base_path, ident), params={"fields": ",".join(fields)},
                         microversion=Node._get_microversion(proxy))
    exceptions.raise_from_response(response, error_message=f"No Node found for {ident}")
    body = response.json()
    values = {name: body.get(name) for name in fields}
    values["id"], values["is_maintenance"] = values.pop("uuid", None), values.pop("maintenance", None)
    return SimpleNamespace(**values)
