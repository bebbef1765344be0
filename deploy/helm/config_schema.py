"""Write the `config:` part of the Helm chart's values.schema.json from Kiln's Settings.

    .venv/bin/python deploy/helm/config_schema.py          rewrite deploy/helm/kiln/values.schema.json
    .venv/bin/python deploy/helm/config_schema.py --check  exit 1 when the file is out of date

`config:` keys become `KILN_*` variables in the chart's ConfigMap, so the schema lists exactly
the settings Kiln knows, with their types and limits, and `additionalProperties: false`: a
misspelt key fails `helm install` instead of being ignored by Kiln. Settings that are secrets
or that the chart sets itself (RESERVED, also refused by templates/configmap.yaml) are left out.
tests/test_deploy_helm.py fails when a setting is added without re-running this script.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import SecretStr

SCHEMA_FILE = Path(__file__).parent / "kiln" / "values.schema.json"
# Set through secretKey / database / existingSecret, or fixed by the chart (the data volume).
RESERVED = ("secret_key", "database_url", "data_dir", "oidc_client_secret", "carbon_token")
JSON_TYPES = {str: "string", Path: "string", int: "integer", float: "number", bool: "boolean"}
LIMITS = {
    annotated_types.Ge: ("minimum", "ge"),
    annotated_types.Le: ("maximum", "le"),
    annotated_types.Gt: ("exclusiveMinimum", "gt"),
    annotated_types.Lt: ("exclusiveMaximum", "lt"),
    annotated_types.MinLen: ("minLength", "min_length"),
    annotated_types.MaxLen: ("maxLength", "max_length"),
}


def setting_schema(name: str, field: Any) -> dict[str, Any]:
    """JSON schema of one setting's value in `config:` (None is not a value: leave the key out)."""
    annotation = field.annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    schema: dict[str, Any] = {"description": field.description}
    if typing.get_origin(annotation) is typing.Literal:
        schema["enum"] = list(typing.get_args(annotation))
    elif annotation in JSON_TYPES:
        schema["type"] = JSON_TYPES[annotation]
    else:
        raise TypeError(f"setting {name}: no JSON schema type for {annotation!r}; extend JSON_TYPES")
    for constraint in field.metadata:
        keyword, attribute = LIMITS[type(constraint)]
        schema[keyword] = getattr(constraint, attribute)
    return schema


def config_schema() -> dict[str, Any]:
    """The schema of `config:`: every non-reserved, non-secret setting, nothing else."""
    from kiln.settings import Settings

    properties = {}
    for name, field in Settings.model_fields.items():
        if name in RESERVED:
            continue
        if field.annotation in (SecretStr, SecretStr | None):
            raise ValueError(f"setting {name} is a secret: add it to RESERVED (it belongs in the chart's Secret)")
        properties[name] = setting_schema(name, field)
    return {
        "type": "object",
        "description": "Kiln settings (README \"Configuration\") as KILN_* variables; secrets go in the Secret.",
        "additionalProperties": False,
        "properties": properties,
    }


def updated_schema_text() -> str:
    """values.schema.json as it should be: the file's text with `config` replaced."""
    schema = json.loads(SCHEMA_FILE.read_text())
    schema["properties"]["config"] = config_schema()
    return json.dumps(schema, indent=2) + "\n"


def main(argv: list[str]) -> int:
    """Rewrite the schema file, or with --check report whether it is current."""
    text = updated_schema_text()
    if "--check" in argv:
        if SCHEMA_FILE.read_text() != text:
            print(f"{SCHEMA_FILE} is out of date: run python {Path(__file__)}", file=sys.stderr)
            return 1
        return 0
    SCHEMA_FILE.write_text(text)
    print(f"wrote {SCHEMA_FILE} ({len(config_schema()['properties'])} settings under config)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main(sys.argv[1:]))
