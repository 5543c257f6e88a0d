"""The OpenAPI document as a contract: what each route takes and every answer it can give.

FastAPI describes the routes; :func:`contract` completes the document: the ``api-key`` and bearer
security schemes (every API operation needs one), a schema for each JSON 200 (File, file list,
deleted file, Batch, batch list, chat completion, Response), the error envelope on every error
status a route gives (400, 401, 404, 405, 413, 500), request bodies as precise as the service's
own checks (so a request the schema calls valid is accepted), and ``api-version`` required on the
Azure classic routes and limited to its values on the Azure v1 routes.
"""

from __future__ import annotations

from typing import Any

from .dialects import AZURE_API_VERSIONS, AZURE_V1_API_VERSIONS, UPLOAD_PURPOSES

DAY = 86400
_EXPIRY = {"openai": (3600, 30 * DAY), "azure": (14 * DAY, 30 * DAY)}
_BATCH_ENDPOINTS = {"openai": ["/v1/chat/completions", "/v1/responses"],
                    "azure": ["/chat/completions", "/v1/chat/completions", "/responses", "/v1/responses"]}

_NULLABLE_INT = {"type": ["integer", "null"]}
_NULLABLE_STR = {"type": ["string", "null"]}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"],
        "description": "The error envelope: OpenAI {message, type, param, code}; Azure {code, message}.",
        "properties": {"error": {"type": "object", "required": ["message"], "properties": {
            "message": {"type": "string"}, "type": _NULLABLE_STR, "param": _NULLABLE_STR,
            "code": _NULLABLE_STR}}},
    },
    "File": {
        "type": "object", "required": ["id", "object", "bytes", "created_at", "filename", "purpose", "status"],
        "properties": {
            "id": {"type": "string"}, "object": {"const": "file"}, "bytes": {"type": "integer", "minimum": 0},
            "created_at": {"type": "integer"}, "expires_at": _NULLABLE_INT, "filename": {"type": "string"},
            "purpose": {"type": "string"},
            "status": {"enum": ["uploaded", "pending", "running", "processed", "error", "deleting", "deleted"]},
            "status_details": _NULLABLE_STR,
        },
    },
    "FileDeleted": {"type": "object", "required": ["id", "object", "deleted"], "properties": {
        "id": {"type": "string"}, "object": {"const": "file"}, "deleted": {"type": "boolean"}}},
    "BatchUsage": {"type": "object", "required": ["input_tokens", "output_tokens", "total_tokens"], "properties": {
        "input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"},
        "input_tokens_details": {"type": "object", "properties": {"cached_tokens": {"type": "integer"}}},
        "output_tokens_details": {"type": "object", "properties": {"reasoning_tokens": {"type": "integer"}}}}},
    "Batch": {
        "type": "object",
        "required": ["id", "object", "endpoint", "input_file_id", "completion_window", "status", "created_at"],
        "properties": {
            "id": {"type": "string"}, "object": {"const": "batch"}, "endpoint": {"type": "string"},
            "errors": {"type": ["object", "null"]}, "input_file_id": {"type": "string"},
            "completion_window": {"type": "string"},
            "status": {"enum": ["validating", "failed", "in_progress", "finalizing", "completed", "expired",
                                "cancelling", "cancelled"]},
            "output_file_id": _NULLABLE_STR, "error_file_id": _NULLABLE_STR, "created_at": {"type": "integer"},
            **{k: _NULLABLE_INT for k in ("in_progress_at", "expires_at", "finalizing_at", "completed_at",
                                          "failed_at", "expired_at", "cancelling_at", "cancelled_at")},
            "request_counts": {"type": "object", "required": ["total", "completed", "failed"], "properties": {
                "total": {"type": "integer"}, "completed": {"type": "integer"}, "failed": {"type": "integer"}}},
            "metadata": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
            "model": _NULLABLE_STR,
            "usage": {"$ref": "#/components/schemas/BatchUsage"},
        },
    },
    "ChatCompletion": {
        "type": "object", "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"}, "object": {"const": "chat.completion"}, "created": {"type": "integer"},
            "model": {"type": "string"}, "system_fingerprint": _NULLABLE_STR, "service_tier": _NULLABLE_STR,
            "choices": {"type": "array", "items": {"type": "object", "required": ["index", "message", "finish_reason"],
                                                   "properties": {"index": {"type": "integer"},
                                                                  "message": {"type": "object"},
                                                                  "finish_reason": {"type": "string"}}}},
            "usage": {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"]},
        },
    },
    "Response": {
        "type": "object",
        "required": ["id", "object", "created_at", "model", "output", "parallel_tool_calls", "tool_choice", "tools"],
        "description": "A Responses API response (openai.types.responses.Response).",
        "properties": {
            "id": {"type": "string"}, "object": {"const": "response"}, "created_at": {"type": "number"},
            "status": {"enum": ["completed", "failed", "in_progress", "cancelled", "queued", "incomplete"]},
            "model": {"type": "string"}, "output": {"type": "array", "items": {"type": "object"}},
            "incomplete_details": {"type": ["object", "null"]}, "usage": {"type": ["object", "null"]},
            "parallel_tool_calls": {"type": "boolean"}, "tools": {"type": "array"},
        },
    },
}


def _page(item: str) -> dict[str, Any]:
    return {"type": "object", "required": ["object", "data", "has_more"], "properties": {
        "object": {"const": "list"}, "data": {"type": "array", "items": {"$ref": f"#/components/schemas/{item}"}},
        "first_id": _NULLABLE_STR, "last_id": _NULLABLE_STR, "has_more": {"type": "boolean"}}}


SCHEMAS["FileList"] = _page("File")
SCHEMAS["BatchList"] = _page("Batch")

_ERROR_TEXT = {
    "400": "The request is invalid (the message names the parameter and the fix)",
    "401": "A missing or wrong key (api-key header, or Authorization: Bearer)",
    "404": "No such object in this dialect, or no such deployment or route",
    "405": "The method is not served on this path (see the Allow header)",
    "413": "The JSON body is over the limit of this endpoint",
    "500": "The engine failed on a live call",
}


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


def _dialect_of(path: str) -> str:
    return "openai" if path.startswith("/v1/") else "azure"


def _batch_create(dialect: str) -> dict[str, Any]:
    low, high = _EXPIRY[dialect]
    return {"type": "object", "required": ["input_file_id", "endpoint", "completion_window"],
            "additionalProperties": False, "properties": {
                "input_file_id": {"type": "string"},
                "endpoint": {"enum": _BATCH_ENDPOINTS[dialect]},
                "completion_window": {"const": "24h"},
                "metadata": {"type": ["object", "null"], "maxProperties": 16,
                             "propertyNames": {"pattern": "^[A-Za-z0-9_]{1,64}$", "not": {"const": "localbatch_faults"}},
                             "additionalProperties": {"type": "string", "maxLength": 512}},
                "output_expires_after": {"type": "object", "required": ["anchor", "seconds"],
                                         "additionalProperties": False, "properties": {
                                             "anchor": {"const": "created_at"},
                                             "seconds": {"type": "integer", "minimum": low, "maximum": high}}}}}


_MESSAGES = {"type": "array", "minItems": 1, "maxItems": 8, "items": {
    "type": "object", "required": ["role", "content"], "additionalProperties": False,
    "properties": {"role": {"enum": ["system", "user"]}, "content": {"type": "string", "minLength": 1,
                                                                   "maxLength": 2000}}}}


def _live_body(responses: bool, with_model: bool) -> dict[str, Any]:
    """The live-call body the service takes for sure (a valid one of these is always answered)."""
    if responses:
        props: dict[str, Any] = {"input": {"type": "string", "minLength": 1, "maxLength": 2000},
                                 "max_output_tokens": {"type": "integer", "minimum": 16, "maximum": 256}}
        required = ["input"]
    else:
        props = {"messages": _MESSAGES, "max_tokens": {"type": "integer", "minimum": 1, "maximum": 256}}
        required = ["messages"]
    if with_model:
        props["model"] = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9._-]+$"}
        required = ["model", *required]
    return {"type": "object", "required": required, "additionalProperties": False, "properties": props}


def _upload(dialect: str) -> dict[str, Any]:
    low, high = _EXPIRY[dialect]
    return {"type": "object", "required": ["file", "purpose"], "properties": {
        "file": {"type": "string", "format": "binary"},
        "purpose": {"enum": sorted(UPLOAD_PURPOSES[dialect]),
                    "description": "purpose 'batch' takes a .jsonl filename"},
        "expires_after[anchor]": {"const": "created_at"},
        "expires_after[seconds]": {"type": "integer", "minimum": low, "maximum": high}},
        "dependentRequired": {"expires_after[anchor]": ["expires_after[seconds]"],
                              "expires_after[seconds]": ["expires_after[anchor]"]}}


def contract(document: dict[str, Any]) -> dict[str, Any]:
    """Complete FastAPI's ``document`` in place (see the module docstring) and return it."""
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(SCHEMAS)
    components["securitySchemes"] = {
        "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "api-key",
                         "description": "The service's key (LOCALBATCH_API_KEY), Azure style"},
        "Bearer": {"type": "http", "scheme": "bearer",
                   "description": "The service's key as a bearer token (OpenAI style; on Azure also an Entra ID token)"},
    }
    for schema in list(components["schemas"]):
        if schema in ("HTTPValidationError", "ValidationError"):
            del components["schemas"][schema]
    for path, operations in document.get("paths", {}).items():
        api = path.startswith(("/v1/", "/openai/"))
        dialect = _dialect_of(path)
        for method, op in operations.items():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            if not api:
                continue
            op["security"] = [{"ApiKeyHeader": []}, {"Bearer": []}]
            ok = responses.setdefault("200", {"description": "OK"})
            if path.endswith("/content"):
                ok["content"] = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
            else:
                ok["content"] = _json(_ok_schema(path, method))
            statuses = ["400", "401", "404", "405"]
            if method == "post" and not path.endswith("/files"):
                statuses.append("413")
            if path.endswith(("/chat/completions", "/responses")):
                statuses.append("500")
            for status in statuses:
                responses[status] = {"description": _ERROR_TEXT[status], "content": _json("Error")}
            params = op.setdefault("parameters", [])
            if path.startswith("/openai/v1/"):
                params.append({"name": "api-version", "in": "query", "required": False,
                               "schema": {"enum": list(AZURE_V1_API_VERSIONS)},
                               "description": "None needed on the v1 routes ('preview' for preview features)"})
            for param in params:
                if param.get("name") == "api-version" and path.startswith("/openai/") and not path.startswith("/openai/v1/"):
                    versions = list(AZURE_API_VERSIONS)
                    if path.endswith("/responses"):
                        versions = versions[versions.index("2025-03-01-preview"):]
                    param["required"] = True
                    param["schema"] = {"enum": versions}
            if method == "post" and path.endswith("/batches"):
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _batch_create(dialect)}}}
            elif method == "post" and path.endswith(("/chat/completions", "/responses")):
                with_model = "/deployments/" not in path
                op["requestBody"] = {"required": True, "content": {"application/json": {
                    "schema": _live_body(path.endswith("/responses"), with_model)}}}
            elif method == "post" and path.endswith("/files"):
                op["requestBody"] = {"required": True, "content": {"multipart/form-data": {
                    "schema": _upload(dialect),
                    "encoding": {"file": {"contentType": "application/octet-stream", "headers": {
                        "Content-Disposition": {"schema": {"type": "string"},
                                                "example": 'form-data; name="file"; filename="input.jsonl"'}}}}}}}
    return document


def _ok_schema(path: str, method: str) -> str:
    if path.endswith("/files"):
        return "File" if method == "post" else "FileList"
    if path.endswith("/files/{file_id}"):
        return "FileDeleted" if method == "delete" else "File"
    if path.endswith("/batches"):
        return "Batch" if method == "post" else "BatchList"
    if "/batches/" in path:
        return "Batch"
    if path.endswith("/chat/completions"):
        return "ChatCompletion"
    if path.endswith("/responses"):
        return "Response"
    raise ValueError(f"no answer schema for {method.upper()} {path}")
