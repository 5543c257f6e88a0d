"""The HTTP application: files, batches and chat completions in the Azure and OpenAI dialects.

Route prefixes and their dialect:

* ``/openai/...``: Azure classic; every call needs ``?api-version=`` from
  :data:`localbatch.dialects.AZURE_API_VERSIONS`; live chat at
  ``/openai/deployments/{deployment}/chat/completions``, live Responses at ``/openai/responses``
  (from api-version 2025-03-01-preview).
* ``/openai/v1/...``: Azure v1; no api-version; live chat at ``/openai/v1/chat/completions`` and
  ``/openai/v1/responses``.
* ``/v1/...``: OpenAI; live chat at ``/v1/chat/completions`` and ``/v1/responses``.

The two Azure prefixes are one resource; the OpenAI prefix is another: each sees only the files
and batches created through it (a foreign id is a 404). Batches run ``/chat/completions`` or
``/v1/responses`` requests; Responses requests reach the chat-only engines through
:mod:`localbatch.responses`.

Every route checks the key (``api-key`` header or ``Authorization: Bearer``, e.g. an Entra ID
token on Azure) when one is set. JSON bodies are limited (:data:`MAX_JSON_BODY`,
:data:`MAX_LIVE_BODY`) before they are read whole. Errors use the dialect's envelope, carry
``x-should-retry: false`` when deterministic, and every answer carries ``x-request-id``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .config import Settings, remove_service_record, write_service_record
from .dialects import (
    UPLOAD_PURPOSES,
    ApiError,
    Dialect,
    check_api_version,
    new_batch_id,
    new_file_id,
    responses_allowed,
    responses_version_error,
)
from .responses import answer_for_client, is_responses, request_for_engine
from .durable import crash_moments, crash_point, staging_path, sync_and_rename
from .faults import at_create
from .store import Store
from .worker import EngineGate, Worker

log = logging.getLogger("localbatch.app")

DAY = 24 * 3600
OPENAI_BATCH_FILE_TTL = 30 * DAY
#: Batch endpoints per dialect. Azure takes the chat and Responses paths with or without ``/v1``;
#: the endpoint names the API and every line's url must match it (the lint's ``url_mismatch``).
BATCH_ENDPOINTS = {"openai": ("/v1/chat/completions", "/v1/responses"),
                   "azure": ("/chat/completions", "/v1/chat/completions", "/responses", "/v1/responses")}
#: Allowed ``seconds`` of ``expires_after`` (uploads) and ``output_expires_after`` (batches), anchor
#: ``created_at``: OpenAI 1 hour to 30 days; Azure 14 to 30 days (spec/batch-api.md §2.1, §2.2, §3.1, §6.7).
EXPIRES_AFTER_RANGE = {"openai": (3600, 30 * DAY), "azure": (14 * DAY, 30 * DAY)}
#: Largest JSON body of batches.create / cancel (and any other non-upload POST), in bytes.
MAX_JSON_BODY = 1024 * 1024
#: Largest JSON body of a live chat or Responses call: 8 MiB (the real services document none for
#: text; 8 MiB is far above the longest context the local models take).
MAX_LIVE_BODY = 8 * 1024 * 1024
#: Seconds between sweeps that delete files whose ``expires_at`` has passed.
EXPIRY_SWEEP_SECONDS = 5.0
UPLOAD_CHUNK = 1024 * 1024
#: Limits on a files.create body besides the file size: parts in all, and bytes of a non-file field.
MAX_UPLOAD_PARTS = 20
MAX_FIELD_BYTES = 4096


@dataclass
class Service:
    """The running parts the routes use."""

    settings: Settings
    store: Store
    gate: EngineGate
    worker: Worker
    engine_name: str


def route_dialect(path: str) -> tuple[Dialect | None, bool]:
    """(dialect, is_azure_classic) of a request path; (None, False) outside the API prefixes."""
    if path.startswith("/openai/v1/"):
        return "azure", False
    if path.startswith("/openai/"):
        return "azure", True
    if path.startswith("/v1/"):
        return "openai", False
    return None, False


def error_response(exc: ApiError, dialect: Dialect) -> JSONResponse:
    """Render ``exc`` in ``dialect``'s envelope; deterministic client errors say: do not retry."""
    headers = {"x-should-retry": "false"} if 400 <= exc.status < 500 and exc.status not in (408, 429) else {}
    return JSONResponse(exc.body(dialect), status_code=exc.status, headers=headers)


def _credentials(request: Request) -> list[str]:
    """Every credential a request presents: the ``api-key`` header and the ``Authorization: Bearer``
    token (an API key, or on Azure an Entra ID token), each as sent (blank ones included)."""
    found = []
    if "api-key" in request.headers:
        found.append(request.headers["api-key"].strip())
    if "authorization" in request.headers:
        auth = request.headers["authorization"]
        found.append(auth[7:].strip() if auth[:7].lower() == "bearer " else "")
    return found


def authorized(request: Request, expected: bytes) -> bool:
    """True when the request presents a credential and every one it presents is the key (a wrong or
    blank one is never rescued by another); compared in constant time."""
    presented = _credentials(request)
    results = [hmac.compare_digest(c.encode(), expected) for c in presented]
    return bool(results) and all(results)


def unauthorized(dialect: Dialect) -> ApiError:
    """The 401 a missing or wrong key gets."""
    if dialect == "openai":
        return ApiError(401, "Incorrect API key provided. Send the service's key as 'Authorization: Bearer "
                        "<key>' (the value of LOCALBATCH_API_KEY).", code="invalid_api_key")
    return ApiError(401, "Access denied due to invalid subscription key or wrong API endpoint. Send the "
                    "service's key in the 'api-key' header (the value of LOCALBATCH_API_KEY).",
                    azure_code="401", type=None)


def _service(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


def _dialect(request: Request) -> Dialect:
    return request.state.dialect  # type: ignore[no-any-return]


# ----- object shapes ------------------------------------------------------------------------------


def render_file(row: Any, now: float | None = None) -> dict[str, Any]:
    """A File object in the shape of the dialect it was created in."""
    now = time.time() if now is None else now
    if now < row["ready_at"]:
        status, details = "pending", None
    else:
        status, details = row["outcome"], row["status_details"]
    return {
        "id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
        "filename": row["filename"], "purpose": row["purpose"], "status": status,
        "status_details": details, "expires_at": row["expires_at"],
    }


def render_batch(row: Any) -> dict[str, Any]:
    """A Batch object in the shape of the dialect it was created in."""
    out: dict[str, Any] = {
        "id": row["id"], "object": "batch", "endpoint": row["endpoint"],
        "errors": json.loads(row["errors"]) if row["errors"] else None,
        "input_file_id": row["input_file_id"], "completion_window": row["completion_window"],
        "status": row["status"], "output_file_id": row["output_file_id"], "error_file_id": row["error_file_id"],
    }
    for key in ("created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
                "expired_at", "cancelling_at", "cancelled_at"):
        out[key] = row[key]
    out["request_counts"] = {"total": row["total"], "completed": row["completed"], "failed": row["failed"]}
    out["metadata"] = json.loads(row["metadata"]) if row["metadata"] else None
    if row["dialect"] == "openai":
        out["model"] = row["model"]
        out["usage"] = batch_usage(row)
    return out


def batch_usage(row: Any) -> dict[str, Any]:
    """``Batch.usage``: the sums the store keeps of every recorded result's usage (see ``line_usage``)."""
    tokens_in, tokens_out = int(row["usage_input_tokens"] or 0), int(row["usage_output_tokens"] or 0)
    return {
        "input_tokens": tokens_in,
        "input_tokens_details": {"cached_tokens": int(row["usage_cached_tokens"] or 0)},
        "output_tokens": tokens_out,
        "output_tokens_details": {"reasoning_tokens": int(row["usage_reasoning_tokens"] or 0)},
        "total_tokens": tokens_in + tokens_out,
    }


def render_list(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A cursor page: ``data``, ``first_id``, ``last_id``, ``has_more``."""
    return {"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None, "has_more": has_more}


# ----- request models (also document the routes in /openapi.json) ---------------------------------


class BatchCreate(BaseModel):
    """Body of ``batches.create``."""

    model_config = ConfigDict(extra="allow")
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: Any = None
    output_expires_after: Any = None


async def require_api_version(api_version: str = Query(..., alias="api-version", description=(
        "The Azure OpenAI API version, one of localbatch.dialects.AZURE_API_VERSIONS (e.g. 2024-10-21)."))) -> None:
    """Azure classic routes need ``?api-version=`` with a version Azure serves batches on."""
    check_api_version(api_version, v1=False)


async def optional_api_version(request: Request) -> None:
    """Azure v1 routes take no api-version (or ``preview``); anything else is refused as Azure does."""
    check_api_version(request.query_params.get("api-version"), v1=True)


# ----- route handlers ------------------------------------------------------------------------------


class _MalformedUpload(ValueError):
    """The multipart body cannot be parsed or breaks a limit on its parts (a 400 for the client)."""


def _decode(raw: bytes | bytearray) -> str:
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return bytes(raw).decode("latin-1")


def _multipart_boundary(request: Request) -> bytes | None:
    """The boundary of a ``multipart/form-data`` body; None for any other content type.

    Raises ApiError when the type is multipart/form-data but has no usable boundary.
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        return None
    boundary = params.get(b"boundary", b"")
    if not boundary or len(boundary) > 256:
        raise _malformed_upload("missing or invalid boundary in the Content-Type header")
    return boundary


def _malformed_upload(reason: object) -> ApiError:
    return ApiError(400, f"Could not parse the multipart upload: {reason}. Send 'file' and 'purpose' as "
                    "multipart/form-data.", azure_code="invalidPayload")


def _too_large(limit: int) -> ApiError:
    return ApiError(400, f"File is too large. The limit is {limit:,} bytes; split the batch into smaller files.",
                    azure_code="invalidPayload")


class _StreamedUpload:
    """A multipart/form-data body parsed as it arrives.

    Small fields (``purpose``, ``expires_after[...]``, anything else) are kept in :attr:`fields`, each
    at most :data:`MAX_FIELD_BYTES`; the bytes of the one file part go to the path ``destination``
    returns when its headers have been read (``None`` while no ``file`` part was seen). At most
    :data:`MAX_UPLOAD_PARTS` parts and one file part; a file part not named ``file`` is read and dropped.
    Past ``limit`` file bytes, :meth:`feed` raises the "too large" ApiError at once.

    Callers feed chunks, :meth:`flush` the buffered file bytes (``pending`` tells how many) from a
    worker thread, :meth:`finish` at the end of the body, and :meth:`discard` on any failure.
    """

    def __init__(self, boundary: bytes, limit: int, destination: Callable[[dict[str, str], str], Path]) -> None:
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.path: Path | None = None
        self.size = 0
        self._limit = limit
        self._destination = destination
        self._parts = 0
        self._files = 0
        self._ended = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._kind = "field"  # of the current part: field, file (kept) or skip (a file part dropped)
        self._name = ""
        self._value = bytearray()
        self._buffer = bytearray()
        self._out: BinaryIO | None = None
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value_data, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end, "on_end": self._end,
        })

    @property
    def pending(self) -> int:
        """File bytes received and not yet written."""
        return len(self._buffer)

    @property
    def ended(self) -> bool:
        """True once the closing boundary was seen."""
        return self._ended

    def feed(self, chunk: bytes) -> None:
        """Parse one chunk of the body (raises _MalformedUpload, ApiError)."""
        if self._ended:
            return  # the epilogue after the closing boundary is ignored
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise _MalformedUpload(str(exc) or "invalid multipart data") from None

    def finish(self) -> None:
        """The body has ended: check that the closing boundary was seen."""
        if not self._ended:
            raise _MalformedUpload("the body ends before the closing boundary")

    def flush(self) -> None:
        """Write the buffered file bytes (blocking: call it from a worker thread)."""
        data, self._buffer = self._buffer, bytearray()
        if self._out is not None and data:
            self._out.write(data)

    def close(self) -> None:
        """Write what is left and close the file (blocking)."""
        self.flush()
        if self._out is not None:
            self._out.close()
            self._out = None

    def discard(self) -> None:
        """Close and remove the file written so far."""
        self._buffer = bytearray()
        if self._out is not None:
            self._out.close()
            self._out = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    # ----- parser callbacks

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_UPLOAD_PARTS:
            raise _MalformedUpload(f"too many parts (at most {MAX_UPLOAD_PARTS})")
        self._disposition, self._kind, self._name, self._value = b"", "field", "", bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if bytes(self._header_name).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name, self._header_value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise _MalformedUpload("a part has no Content-Disposition header with a name")
        self._name = _decode(options[b"name"])
        if b"filename" not in options:
            return
        self._files += 1
        if self._files > 1:
            raise _MalformedUpload("more than one file part")
        if self._name != "file":
            self._kind = "skip"
            return
        self._kind = "file"
        self.filename = _decode(options[b"filename"])
        self.path = self._destination(self.fields, self.filename)
        self._out = self.path.open("wb")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._kind == "field":
            if len(self._value) + end - start > MAX_FIELD_BYTES:
                raise _MalformedUpload(f"the field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes")
            self._value += data[start:end]
            return
        self.size += end - start
        if self.size > self._limit:
            raise _too_large(self._limit)
        if self._kind == "file":
            self._buffer += memoryview(data)[start:end]

    def _part_end(self) -> None:
        if self._kind == "field":
            self.fields[self._name] = _decode(self._value)

    def _end(self) -> None:
        self._ended = True


def _check_purpose(purpose: Any, filename: str, dialect: Dialect) -> None:
    if not isinstance(purpose, str) or not purpose:
        raise ApiError(400, "Missing required parameter: 'purpose'.", param="purpose",
                       code="missing_required_parameter", azure_code="invalidPayload")
    if purpose not in UPLOAD_PURPOSES[dialect]:
        allowed = ", ".join(sorted(UPLOAD_PURPOSES[dialect]))
        raise ApiError(400, f"Invalid value for purpose: {purpose!r}. Supported values: {allowed}.",
                       param="purpose", code="invalid_value", azure_code="invalidPayload")
    if purpose == "batch" and dialect == "openai" and not filename.lower().endswith(".jsonl"):
        raise ApiError(400, "Invalid file format for Batch API. Must be .jsonl", param=None)


def _expires_after(form: Any, dialect: Dialect, created_at: int) -> int | None:
    anchor = form.get("expires_after[anchor]") or form.get("expires_after.anchor")
    seconds = form.get("expires_after[seconds]") or form.get("expires_after.seconds")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise ApiError(400, f"Invalid value for 'expires_after.anchor': {anchor!r}. Supported value: "
                       "'created_at'.", param="expires_after.anchor", code="invalid_value",
                       azure_code="invalidPayload")
    low, high = EXPIRES_AFTER_RANGE[dialect]
    try:
        value = int(str(seconds))
    except ValueError:
        value = -1
    if not low <= value <= high:
        raise ApiError(400, f"Invalid value for 'expires_after.seconds': {seconds!r}. It must be between {low} "
                       f"and {high} seconds.", param="expires_after.seconds", code="invalid_value",
                       azure_code="invalidPayload")
    return created_at + value


async def upload_file(request: Request) -> dict[str, Any]:
    """``files.create``: multipart ``file`` + ``purpose``, parsed as the body arrives.

    The file bytes go straight to disk under the data directory (never to a temporary spool), and
    the size limit is enforced as they arrive, so a body without Content-Length is cut off at the limit.
    When ``purpose`` precedes ``file`` (as the SDK sends them) it is checked before any byte is written.
    The bytes go to the staging name ``.<id>.part`` next to the final path and are flushed to disk and
    renamed once the whole body is read and checked; the row is committed after the rename, so a
    crash leaves no listed file incomplete (start-up removes what it leaves). The file is removed on
    any failure.
    """
    svc, dialect = _service(request), _dialect(request)
    limit = svc.settings.max_file_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + UPLOAD_CHUNK:
        raise _too_large(limit)
    boundary = _multipart_boundary(request)
    if boundary is None:  # not multipart: there can be no file part
        raise ApiError(400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter",
                       azure_code="invalidPayload")
    file_id = new_file_id(dialect)
    final = svc.store.file_path(file_id)
    staged = staging_path(final)

    def destination(fields: dict[str, str], filename: str) -> Path:
        if "purpose" in fields:
            _check_purpose(fields["purpose"], Path(filename or "upload").name, dialect)
        return staged

    upload = _StreamedUpload(boundary, limit, destination)
    try:
        try:
            async for chunk in request.stream():
                upload.feed(chunk)
                if upload.pending >= UPLOAD_CHUNK:
                    await run_in_threadpool(upload.flush)
                    crash_point("upload")
                if upload.ended:  # bytes after the closing boundary are not read
                    break
            upload.finish()
        except _MalformedUpload as exc:
            raise _malformed_upload(exc) from None
        except ClientDisconnect:
            raise _malformed_upload("the client disconnected before the body ended") from None
        await run_in_threadpool(upload.close)
        if upload.filename is None:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file",
                           code="missing_required_parameter", azure_code="invalidPayload")
        filename = Path(upload.filename or "upload").name
        purpose = upload.fields.get("purpose")
        _check_purpose(purpose, filename, dialect)
        assert isinstance(purpose, str) and upload.path is not None
        now = time.time()
        created = int(now)
        expires_at = _expires_after(upload.fields, dialect, created)
        if expires_at is None and dialect == "openai" and purpose == "batch":
            expires_at = created + OPENAI_BATCH_FILE_TTL
        await run_in_threadpool(sync_and_rename, upload.path, final)
        upload.path = final
        crash_point("upload-renamed")
        outcome, details, ready_at = "processed", None, now
        if dialect == "azure":
            ready_at = now + svc.settings.file_processing_delay
            if purpose == "batch" and not filename.lower().endswith(".jsonl"):
                outcome, details = "error", "Invalid file format for Batch API. Must be .jsonl"
        size = upload.size
        row = await run_in_threadpool(
            lambda: svc.store.add_file(file_id=file_id, dialect=dialect, filename=filename, purpose=purpose,
                                       size=size, expires_at=expires_at, ready_at=ready_at, outcome=outcome,
                                       status_details=details, created_at=created))
    except BaseException:
        upload.discard()
        raise
    if purpose == "batch" and 0 < svc.settings.subprocess_min_bytes <= size:
        svc.worker.prepare_validator()  # warm while the client goes on to create the batch
    return render_file(row)


def _get_file_row(svc: Service, file_id: str, dialect: Dialect) -> Any:
    """The live file ``file_id`` of ``dialect`` (404 for another dialect's, an expired or a deleted one)."""
    row = svc.store.get_file(file_id)
    if row is not None and row["expires_at"] is not None and row["expires_at"] <= time.time():
        svc.store.delete_file(file_id)  # expired: gone, whether or not the sweep has run yet
        row = None
    if row is None or row["dialect"] != dialect:
        raise ApiError(404, f"No such File object: {file_id}", param="id", azure_code="notFound",
                       code=None if dialect == "openai" else "notFound")
    return row


async def retrieve_file(request: Request, file_id: str) -> dict[str, Any]:
    """``files.retrieve`` (on the event loop: one read on this thread's own connection, no thread hop)."""
    return render_file(_get_file_row(_service(request), file_id, _dialect(request)))


def list_files(
    request: Request,
    purpose: str | None = None,
    after: str | None = None,
    limit: int = Query(10000, ge=1, le=10000),
    order: str = Query("desc", pattern="^(asc|desc)$"),
) -> dict[str, Any]:
    """``files.list``: newest first by default; ``after``/``limit`` pagination."""
    svc, dialect = _service(request), _dialect(request)
    if after:
        anchor = svc.store.get_file(after)
        if anchor is not None and anchor["dialect"] != dialect:
            raise _unknown_cursor(after, "file")
    try:
        rows, more = svc.store.list_files(purpose=purpose, after=after, limit=limit, order=order, dialect=dialect)
    except LookupError:
        raise _unknown_cursor(after, "file") from None
    now = time.time()
    return render_list([render_file(r, now) for r in rows if r["expires_at"] is None or r["expires_at"] > now], more)


def delete_file(request: Request, file_id: str) -> dict[str, Any]:
    """``files.delete``."""
    svc = _service(request)
    _get_file_row(svc, file_id, _dialect(request))
    svc.store.delete_file(file_id)
    return {"id": file_id, "object": "file", "deleted": True}


def file_content(request: Request, file_id: str) -> FileResponse:
    """``files.content``: the bytes, as ``application/octet-stream``."""
    svc = _service(request)
    row = _get_file_row(svc, file_id, _dialect(request))
    return FileResponse(svc.store.file_path(file_id), media_type="application/octet-stream",
                        filename=row["filename"])


def _check_metadata(metadata: Any) -> None:
    from batchkit.lint import lint_batch_metadata

    for finding in lint_batch_metadata(metadata):
        if getattr(finding, "severity", "error") == "error":
            raise ApiError(400, finding.message, param=finding.param or "metadata",
                           code=finding.code or "invalid_value", azure_code="invalidPayload")


def create_batch(request: Request, body: BatchCreate) -> dict[str, Any]:
    """``batches.create``: checks the request, then the batch starts ``validating``."""
    svc, dialect = _service(request), _dialect(request)
    settings = svc.settings
    try:
        file_row = _get_file_row(svc, body.input_file_id, dialect)
    except ApiError:
        raise ApiError(404, f"No such File object: {body.input_file_id}. Upload the input file first "
                       "(files.create with purpose 'batch', on the same endpoint as this call).",
                       param="input_file_id", azure_code="notFound") from None
    status = render_file(file_row)["status"]
    if status != "processed":
        raise ApiError(400, f"The input file '{body.input_file_id}' is in '{status}' state. Only files with status "
                       "'Processed' are accepted for batch inferencing. Please check the file status and try again",
                       param="input_file_id", code="invalid_value", azure_code="invalidPayload")
    if file_row["purpose"] != "batch":
        raise ApiError(400, f"The input file '{body.input_file_id}' has purpose '{file_row['purpose']}'; a batch "
                       "needs a file uploaded with purpose 'batch'.", param="input_file_id",
                       code="invalid_value", azure_code="invalidPayload")
    if body.endpoint not in BATCH_ENDPOINTS[dialect]:
        allowed = "', '".join(BATCH_ENDPOINTS[dialect])
        raise ApiError(400, f"Invalid value: '{body.endpoint}'. This service runs batches for '{allowed}'.",
                       param="endpoint", code="invalid_value", azure_code="invalidPayload")
    api_version = request.query_params.get("api-version") if route_dialect(request.url.path)[1] else None
    if is_responses(body.endpoint) and not responses_allowed(api_version):
        raise responses_version_error(str(api_version))
    output_ttl = _output_expires_after(body.output_expires_after, dialect)
    if body.completion_window != "24h":
        raise ApiError(400, f"Invalid value: '{body.completion_window}'. Supported values are: '24h'.",
                       param="completion_window", code="invalid_value", azure_code="invalidPayload")
    if body.metadata is not None:
        _check_metadata(body.metadata)
    faults, fault_token_limit = at_create(svc.store, dialect=dialect, metadata=body.metadata,
                                          service_wide=settings.faults, quota=settings.token_quota,
                                          input_path=svc.store.file_path(body.input_file_id))
    now = time.time()
    created = int(now)
    window = float(DAY)
    if dialect == "openai" and settings.completion_window_seconds is not None:
        window = settings.completion_window_seconds
    row = svc.store.add_batch(
        id=new_batch_id(dialect), dialect=dialect, endpoint=body.endpoint, input_file_id=body.input_file_id,
        completion_window=body.completion_window, status="validating", created_at=created,
        validate_after=now + settings.validating_seconds,
        expires_at=created + (int(window) if dialect == "openai" else DAY),
        expire_after=(now + window) if dialect == "openai" else None,
        metadata=json.dumps(body.metadata) if body.metadata is not None else None,
        faults=faults, fault_token_limit=int(fault_token_limit), output_expires_after=output_ttl,
    )
    svc.worker.wake()
    return render_batch(row)


def _output_expires_after(value: Any, dialect: Dialect) -> int | None:
    """Seconds after their creation that a batch's result files expire (None: the dialect's default).

    ``{"anchor": "created_at", "seconds": N}`` with N in the dialect's range (:data:`EXPIRES_AFTER_RANGE`).
    """
    if value is None:
        return None
    low, high = EXPIRES_AFTER_RANGE[dialect]
    if not isinstance(value, dict):
        raise ApiError(400, f"Invalid type for 'output_expires_after': expected an object, but got "
                       f"{type(value).__name__} instead. Send {{\"anchor\": \"created_at\", \"seconds\": {low}}}.",
                       param="output_expires_after", code="invalid_type", azure_code="invalidPayload")
    unknown = sorted(set(value) - {"anchor", "seconds"})
    if unknown:
        raise ApiError(400, f"Unknown parameter: 'output_expires_after.{unknown[0]}'. It takes 'anchor' and "
                       "'seconds'.", param=f"output_expires_after.{unknown[0]}", code="unknown_parameter",
                       azure_code="invalidPayload")
    for key in ("anchor", "seconds"):
        if key not in value:
            raise ApiError(400, f"Missing required parameter: 'output_expires_after.{key}'.",
                           param=f"output_expires_after.{key}", code="missing_required_parameter",
                           azure_code="invalidPayload")
    if value["anchor"] != "created_at":
        raise ApiError(400, f"Invalid value for 'output_expires_after.anchor': {json.dumps(value['anchor'])}. "
                       "Supported values are: 'created_at'.",
                       param="output_expires_after.anchor", code="invalid_value", azure_code="invalidPayload")
    seconds = value["seconds"]
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise ApiError(400, f"Invalid type for 'output_expires_after.seconds': expected an integer, but got "
                       f"{json.dumps(seconds)} instead.", param="output_expires_after.seconds",
                       code="invalid_type", azure_code="invalidPayload")
    if not low <= seconds <= high:
        raise ApiError(400, f"Invalid 'output_expires_after.seconds': {seconds}. It must be between {low} and {high} "
                       f"seconds ({low // 3600} hours to {high // DAY} days) on this endpoint.",
                       param="output_expires_after.seconds", code="invalid_value", azure_code="invalidPayload")
    return seconds


def _get_batch_row(svc: Service, batch_id: str, dialect: Dialect) -> Any:
    """The batch ``batch_id`` of ``dialect`` (404 for another dialect's)."""
    row = svc.store.get_batch(batch_id)
    if row is None or row["dialect"] != dialect:
        raise ApiError(404, f"No such Batch object: {batch_id}", param="id", azure_code="notFound")
    return row


async def retrieve_batch(request: Request, batch_id: str) -> dict[str, Any]:
    """``batches.retrieve``: live status and request counts (on the event loop, like ``retrieve_file``)."""
    return render_batch(_get_batch_row(_service(request), batch_id, _dialect(request)))


def list_batches(request: Request, after: str | None = None,
                 limit: int = Query(20, ge=1, le=100)) -> dict[str, Any]:
    """``batches.list``: newest first, ``after``/``limit`` pagination."""
    svc, dialect = _service(request), _dialect(request)
    if after:
        anchor = svc.store.get_batch(after)
        if anchor is not None and anchor["dialect"] != dialect:
            raise _unknown_cursor(after, "batch")
    try:
        rows, more = svc.store.list_batches(after=after, limit=limit, dialect=dialect)
    except LookupError:
        raise _unknown_cursor(after, "batch") from None
    return render_list([render_batch(r) for r in rows], more)


def _unknown_cursor(after: str | None, kind: str) -> ApiError:
    """The 404 for a list ``after`` cursor that names no object (of this dialect)."""
    return ApiError(404, f"Invalid 'after': no {kind} with id '{after}'. Pass the id of the last item of the "
                    "previous page, or leave 'after' out to start from the first page.",
                    param="after", code=None, azure_code="notFound")


def cancel_batch(request: Request, batch_id: str) -> dict[str, Any]:
    """``batches.cancel``: ``validating``/``in_progress`` -> ``cancelling`` (answers 400, never 409, otherwise)."""
    svc, dialect = _service(request), _dialect(request)
    row = _get_batch_row(svc, batch_id, dialect)
    if row["status"] == "cancelling":
        return render_batch(row)
    if not svc.store.transition(batch_id, ("validating", "in_progress"), "cancelling", cancelling_at=int(time.time())):
        row = _get_batch_row(svc, batch_id, dialect)
        raise ApiError(400, f"Cannot cancel a batch with status '{row['status']}'. Only validating or "
                       "in_progress batches can be cancelled.", param="batch_id", code="invalid_state",
                       azure_code="unexpectedEntityState")
    svc.worker.wake()
    return render_batch(_get_batch_row(svc, batch_id, dialect))


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """A live call's JSON body, refused (400) as the batch path refuses a line: not UTF-8, not JSON,
    NaN/Infinity, an unpaired surrogate escape, a number no 64-bit field holds, or not an object."""
    from batchkit.lint import _SURROGATE_ESCAPE, _is_unicode_text, _reject_constant

    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                       "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent "
                       "was not valid JSON, or not UTF-8.)", code="invalid_json", azure_code="invalidPayload") from None
    if _SURROGATE_ESCAPE.search(raw) and not _is_unicode_text(value):
        raise ApiError(400, "The JSON body holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff), which is not "
                       "a Unicode character. Fix the text that produced it (often a string cut inside an emoji).",
                       code="invalid_json", azure_code="invalidPayload")
    if not isinstance(value, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json", azure_code="invalidPayload")
    bad = _out_of_range(value, "")
    if bad is not None:
        raise ApiError(400, f"Invalid '{bad}': number out of range. Expected a value between -2^63 and 2^63-1, "
                       "but got a larger one instead.", param=bad, code="invalid_value", azure_code="invalidPayload")
    return value


_INT64 = 2**63


def _out_of_range(value: Any, path: str) -> str | None:
    """The path of the first number no 64-bit field can hold (an integer beyond int64, a float beyond double)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return path or "body" if not -_INT64 <= value < _INT64 else None
    if isinstance(value, float):
        return path or "body" if value != value or value in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _out_of_range(item, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _out_of_range(item, f"{path}[{i}]")
            if found:
                return found
    return None


def _live(svc: Service, dialect: Dialect, deployment: str | None, body: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """One live call (chat or Responses, by ``endpoint``) on a standard deployment."""
    from batchkit.lint import lint_request_body

    responses = is_responses(endpoint)
    name = deployment or body.get("model")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "You must provide a model parameter.", param="model", code="missing_required_parameter",
                       azure_code="invalidPayload")
    dep = svc.settings.deployment(name)
    if dep is None:
        if dialect == "openai":
            raise ApiError(404, f"The model `{name}` does not exist or you do not have access to it.",
                           code="model_not_found", param="model")
        raise ApiError(404, f"The API deployment '{name}' for this resource does not exist. Deployments here: "
                       f"{', '.join(d.name for d in svc.settings.deployments)}.", azure_code="DeploymentNotFound")
    if dialect == "azure" and dep.kind == "globalbatch":
        operation = "responses" if responses else "chatCompletion"
        raise ApiError(400, f"The {operation} operation does not work with the specified model, "
                       f"{dep.model_version.split('-20')[0]}. Please choose different model and try again. "
                       f"('{name}' is a Global Batch deployment: send it batch files, or use a standard "
                       "deployment for live calls.)", azure_code="OperationNotSupported")
    if body.get("stream"):
        raise ApiError(400, "Streaming is not supported by this service; send the request without 'stream'.",
                       param="stream", code="unsupported_parameter")
    findings = lint_request_body(body, target=dialect, api="responses") if responses else \
        lint_request_body(body, target=dialect)
    for finding in findings:
        if finding.severity == "error":
            raise ApiError(400, finding.message, raw_body=finding.error_body())
    try:
        completion = svc.gate.complete(request_for_engine(endpoint, body), model=dep.model_version)
    except Exception as exc:
        status, err = getattr(exc, "status_code", None), getattr(exc, "body", None)
        if isinstance(status, int) and isinstance(err, dict):
            raise ApiError(status, str(err), raw_body=err if "error" in err else {"error": err}) from None
        log.exception("engine failed on a live call")
        raise ApiError(500, "The server had an error while processing your request. Sorry about that!",
                       type="server_error", azure_code="internalFailure") from None
    return answer_for_client(endpoint, dialect, completion, body, dep.model_version)


async def _live_route(request: Request, deployment: str | None, endpoint: str) -> dict[str, Any]:
    svc, dialect = _service(request), _dialect(request)
    body = parse_json_body(await request.body())
    return await run_in_threadpool(_live, svc, dialect, deployment, body, endpoint)


async def deployment_chat(request: Request, deployment: str) -> dict[str, Any]:
    """Azure classic live chat on a deployment (a Global Batch deployment refuses it)."""
    return await _live_route(request, deployment, "/chat/completions")


async def v1_chat(request: Request) -> dict[str, Any]:
    """Live chat with the model (deployment) named in the body."""
    return await _live_route(request, None, "/chat/completions")


async def live_responses(request: Request) -> dict[str, Any]:
    """``responses.create`` with the model (deployment) named in the body; Structured Outputs in ``text.format``."""
    if route_dialect(request.url.path)[1]:
        version = request.query_params.get("api-version")
        if not responses_allowed(version):
            raise responses_version_error(str(version))
    return await _live_route(request, None, "/v1/responses")


def build_router(*, classic: bool, with_v1_chat: bool, azure: bool = True) -> APIRouter:
    """The file, batch, chat and Responses routes of one prefix (``azure``: an Azure prefix, whose
    api-version is checked: required on the classic one, optional on v1)."""
    deps = [Depends(require_api_version)] if classic else [Depends(optional_api_version)] if azure else []
    r = APIRouter(dependencies=deps)
    r.add_api_route("/files", upload_file, methods=["POST"], summary="Upload a file (multipart: file, purpose)",
                    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                        "type": "object", "required": ["file", "purpose"], "properties": {
                            "file": {"type": "string", "format": "binary"}, "purpose": {"type": "string"},
                            "expires_after[anchor]": {"type": "string"},
                            "expires_after[seconds]": {"type": "integer"}}}}}}})
    r.add_api_route("/files", list_files, methods=["GET"], summary="List files")
    r.add_api_route("/files/{file_id}", retrieve_file, methods=["GET"], summary="Retrieve a file")
    r.add_api_route("/files/{file_id}", delete_file, methods=["DELETE"], summary="Delete a file")
    r.add_api_route("/files/{file_id}/content", file_content, methods=["GET"], summary="File content",
                    response_class=FileResponse)
    r.add_api_route("/batches", create_batch, methods=["POST"], summary="Create a batch")
    r.add_api_route("/batches", list_batches, methods=["GET"], summary="List batches")
    r.add_api_route("/batches/{batch_id}", retrieve_batch, methods=["GET"], summary="Retrieve a batch")
    r.add_api_route("/batches/{batch_id}/cancel", cancel_batch, methods=["POST"], summary="Cancel a batch")
    live_body = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}}
    if classic:
        r.add_api_route("/deployments/{deployment}/chat/completions", deployment_chat, methods=["POST"],
                        summary="Chat completion on a deployment", openapi_extra=live_body)
    if with_v1_chat:
        r.add_api_route("/chat/completions", v1_chat, methods=["POST"], summary="Chat completion",
                        openapi_extra=live_body)
    r.add_api_route("/responses", live_responses, methods=["POST"], summary="Create a response (Responses API)",
                    openapi_extra=live_body)
    return r


# ----- the application -----------------------------------------------------------------------------


def delete_expired_files(store: Store, now: float | None = None) -> list[str]:
    """Delete every file whose ``expires_at`` has passed (bytes and row); returns their ids."""
    now = time.time() if now is None else now
    gone = [file_id for file_id in store.expired_files(now) if store.delete_file(file_id)]
    if gone:
        log.info("deleted %d expired file(s): %s", len(gone), ", ".join(gone[:10]))
    return gone


async def _sweep_expired_files(store: Store) -> None:
    while True:
        try:
            await run_in_threadpool(delete_expired_files, store)
        except Exception:  # keep sweeping; the next round retries
            log.exception("expired-file sweep failed")
        await asyncio.sleep(EXPIRY_SWEEP_SECONDS)


class _BodyTooLarge(StarletteHTTPException):
    """A JSON body passed its limit while it was read (rendered as a 413 in the dialect's envelope)."""


def body_limit(path: str, method: str) -> int | None:
    """The byte limit of a request body on ``path`` (None: no JSON-body limit, e.g. uploads, GETs)."""
    if method not in ("POST", "PUT", "PATCH") or path.endswith("/files"):
        return None
    if path.endswith(("/chat/completions", "/responses")):
        return MAX_LIVE_BODY
    return MAX_JSON_BODY


def _too_large_message(limit: int) -> str:
    return (f"The request body is larger than {limit:,} bytes, the limit of this endpoint. Send a smaller body "
            "(large batches go in a file: files.create with purpose 'batch').")


class BodyLimitMiddleware:
    """Refuse a JSON body over its limit (:func:`body_limit`) before it is read whole.

    A ``Content-Length`` over the limit is answered at once (the body is never read); a body without
    one (chunked) is counted as it arrives and refused as soon as it passes the limit.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        limit = body_limit(scope.get("path", ""), scope.get("method", "")) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            dialect = route_dialect(scope.get("path", ""))[0] or "openai"
            err = ApiError(413, _too_large_message(limit), code="request_too_large", azure_code="RequestTooLarge")
            response = error_response(err, dialect)
            response.headers["x-request-id"] = str(uuid.uuid4())
            response.headers["connection"] = "close"
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(413, _too_large_message(limit), headers={"connection": "close"})
            return message

        await self.app(scope, counted, send)


class EnvelopeMiddleware:
    """Every API request: its dialect (``request.state.dialect``), the key check (a 401 in the
    dialect's envelope), and an ``x-request-id`` on every answer.

    Plain ASGI (not ``BaseHTTPMiddleware``): no extra task or body stream per request, so a status
    call costs little more than its database read.
    """

    def __init__(self, app: Any, expected_key: bytes) -> None:
        self.app = app
        self.expected_key = expected_key

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        dialect, _classic = route_dialect(scope.get("path", ""))
        scope.setdefault("state", {})["dialect"] = dialect or "openai"
        if dialect is not None and self.expected_key and not authorized(Request(scope), self.expected_key):
            response = error_response(unauthorized(dialect), dialect)
            response.headers["x-request-id"] = str(uuid.uuid4())
            await response(scope, receive, send)
            return

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or ())
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    headers.append((b"x-request-id", str(uuid.uuid4()).encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves on this path (from the OpenAPI document's paths)."""
    import re

    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, request.url.path):
            methods |= {m.upper() for m in operations if m in ("get", "post", "put", "patch", "delete")}
    return ", ".join(sorted(methods))


def _make_engine(settings: Settings) -> Any:
    from .engines import create_engine

    return create_engine(settings.engine, **settings.engine_options)


def create_app(settings: Settings, engine_factory: Callable[[Settings], Any] = _make_engine) -> FastAPI:
    """Build the service for ``settings``; the store, engine and worker start with the app."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        crash_moments()  # an unknown LOCALBATCH_CRASH_AT moment stops the start
        store = Store(settings.data_dir)
        removed = store.remove_orphan_files()  # before anything writes: what a crash left behind
        if removed:
            log.warning("removed %d file(s) no row refers to from %s (left by a crash): %s",
                        len(removed), store.files_dir, ", ".join(removed))
        engine = engine_factory(settings)
        gate = EngineGate(engine, int(getattr(engine, "max_concurrency", 1) or 1),
                          delay=settings.engine_delay if settings.engine == "synthetic" else 0.0)
        load = getattr(engine, "load", None)
        if callable(load):  # load the model now, so the first request does not pay for it
            await run_in_threadpool(load)
        worker = Worker(store, gate, settings)
        app.state.service = Service(settings, store, gate, worker, str(getattr(engine, "name", settings.engine)))
        worker.start()
        record = write_service_record(settings.data_dir, settings.url)
        sweeper = asyncio.create_task(_sweep_expired_files(store))
        try:
            yield
        finally:
            sweeper.cancel()
            remove_service_record(record)
            worker.stop()
            close = getattr(engine, "close", None)
            if callable(close):
                close()
            store.close()

    app = FastAPI(title="localbatch", version="0.1.0", lifespan=lifespan,
                  description="A local Batch service that answers the openai SDK the way Azure OpenAI "
                              "(Global Batch) and OpenAI do.")

    app.add_middleware(BodyLimitMiddleware)
    #: An empty or blank key means "no key": nothing is checked (the CLI allows that on loopback only).
    expected_key = (settings.api_key or "").strip().encode()

    app.add_middleware(EnvelopeMiddleware, expected_key=expected_key)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc, _dialect(request))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if tuple(first.get("loc", ())) == ("query", "api-version"):
            try:
                check_api_version(None, v1=False)
            except ApiError as missing:
                return error_response(missing, _dialect(request))
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        if first.get("type") == "missing":
            message, code = f"Missing required parameter: '{param}'.", "missing_required_parameter"
        elif first.get("type") in ("json_invalid", "model_attributes_type", "dict_type"):
            message, code = "The request body is not a valid JSON object.", "invalid_json"
        else:
            message, code = f"Invalid value for '{param}': {first.get('msg', 'invalid')}.", "invalid_value"
        return error_response(ApiError(400, message, param=param, code=code, azure_code="invalidPayload"),
                              _dialect(request))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        dialect = _dialect(request)
        if exc.status_code == 404:
            err = ApiError(404, f"Invalid URL ({request.method} {request.url.path})" if dialect == "openai"
                           else "Resource not found", azure_code="404")
        elif exc.status_code == 405:
            allow = _allowed_methods(request)
            exc.headers = {**(exc.headers or {}), "Allow": allow}
            err = ApiError(405, f"Method {request.method} is not allowed on {request.url.path}; use {allow or 'another method'}.",
                           code="method_not_allowed", azure_code="MethodNotAllowed")
        elif exc.status_code == 413:
            err = ApiError(413, str(exc.detail), code="request_too_large", azure_code="RequestTooLarge")
        else:
            err = ApiError(exc.status_code, str(exc.detail), azure_code=str(exc.status_code))
        response = error_response(err, dialect)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.get("/healthz", summary="Liveness: answers when the service is ready")
    def healthz(request: Request) -> dict[str, Any]:
        svc: Service = request.app.state.service
        return {"status": "ok", "engine": svc.engine_name, "pid": os.getpid(),
                "deployments": {d.name: d.kind for d in svc.settings.deployments}}

    def openapi_contract() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            from .openapi import contract

            app.openapi_schema = contract(get_openapi(title=app.title, version=app.version,
                                                      description=app.description, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi_contract  # type: ignore[method-assign]

    app.include_router(build_router(classic=False, with_v1_chat=True), prefix="/openai/v1")
    app.include_router(build_router(classic=True, with_v1_chat=False), prefix="/openai")
    app.include_router(build_router(classic=False, with_v1_chat=True, azure=False), prefix="/v1")
    return app


__all__ = ["create_app", "render_batch", "render_file", "route_dialect"]
