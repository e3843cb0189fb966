"""OpenAPI parameter objects generated from pydantic models, for routes that read their query options themselves."""

from typing import Any

from pydantic import BaseModel


def query_parameters(*models: type[BaseModel]) -> list[dict[str, Any]]:
    """OpenAPI parameter objects for the fields of `models`, generated from their JSON schemas."""
    parameters = []
    for model in models:
        for name, schema in model.model_json_schema()["properties"].items():
            schema = dict(schema)
            description = schema.pop("description", "")
            schema.pop("title", None)
            parameters.append({"name": name, "in": "query", "required": False, "schema": schema,
                               "description": description})
    return parameters
