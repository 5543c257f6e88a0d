"""The HTTP application: files, batches and chat completions in the Azure and OpenAI dialects.

Route prefixes and their dialect:

* ``/openai/...``: Azure classic; every call needs ``?api-version=``; live chat at
  ``/openai/deployments/{deployment}/chat/completions``.
* ``/openai/v1/...``: Azure v1; no api-version; live chat at ``/openai/v1/chat/completions``.
* ``/v1/...``: OpenAI; live chat at ``/v1/chat/completions``.

Every route checks the key (``api-key`` header or ``Authorization: Bearer``) when one is set.
Errors use the dialect's envelope, carry ``x-should-retry: false`` when deterministic, and every
answer carries ``x-request-id``.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .config import Settings, remove_service_record, write_service_record
from .dialects import UPLOAD_PURPOSES, ApiError, Dialect, decorate_completion, new_batch_id, new_file_id
from .faults import at_create
from .store import Store
from .worker import EngineGate, Worker

log = logging.getLogger("localbatch.app")

DAY = 24 * 3600
OPENAI_BATCH_FILE_TTL = 30 * DAY
CHAT_ENDPOINTS = {"openai": ("/v1/chat/completions",), "azure": ("/chat/completions", "/v1/chat/completions")}
EXPIRES_AFTER_RANGE = {"openai": (3600, 30 * DAY), "azure": (14 * DAY, 30 * DAY)}
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


def _key_of(request: Request) -> str | None:
    key = request.headers.get("api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return None


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
    return out


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


def require_api_version(api_version: str | None = Query(None, alias="api-version")) -> None:
    """Azure classic routes need ``?api-version=`` (e.g. 2024-10-01-preview)."""
    if not api_version:
        raise ApiError(400, "The api-version query parameter (?api-version=) is required for all requests, "
                       "e.g. ?api-version=2024-10-01-preview.", azure_code="MissingApiVersionParameter",
                       param="api-version")


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
        raise ApiError(400, "Invalid file format for Batch API. Must be .jsonl", param="file")


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
    When ``purpose`` precedes ``file`` (as the SDK sends them) it is checked before any byte is written
    and the bytes go to the file's final path; otherwise they go to ``.upload-<id>.part`` next to it,
    renamed once the whole body is read and checked. The file is removed on any failure.
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
    staged = final.with_name(f".upload-{file_id}.part")

    def destination(fields: dict[str, str], filename: str) -> Path:
        if "purpose" not in fields:
            return staged
        _check_purpose(fields["purpose"], Path(filename or "upload").name, dialect)
        return final

    upload = _StreamedUpload(boundary, limit, destination)
    try:
        try:
            async for chunk in request.stream():
                upload.feed(chunk)
                if upload.pending >= UPLOAD_CHUNK:
                    await run_in_threadpool(upload.flush)
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
        if upload.path != final:
            upload.path.replace(final)
            upload.path = final
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
    return render_file(row)


def _get_file_row(svc: Service, file_id: str, dialect: Dialect) -> Any:
    row = svc.store.get_file(file_id)
    if row is None:
        raise ApiError(404, f"No such File object: {file_id}", param="id", azure_code="notFound",
                       code=None if dialect == "openai" else "notFound")
    return row


def retrieve_file(request: Request, file_id: str) -> dict[str, Any]:
    """``files.retrieve``."""
    return render_file(_get_file_row(_service(request), file_id, _dialect(request)))


def list_files(
    request: Request,
    purpose: str | None = None,
    after: str | None = None,
    limit: int = Query(10000, ge=1, le=10000),
    order: str = Query("desc", pattern="^(asc|desc)$"),
) -> dict[str, Any]:
    """``files.list``: newest first by default; ``after``/``limit`` pagination."""
    try:
        rows, more = _service(request).store.list_files(purpose=purpose, after=after, limit=limit, order=order)
    except LookupError:
        raise _unknown_cursor(after, "file") from None
    now = time.time()
    return render_list([render_file(r, now) for r in rows], more)


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
    file_row = svc.store.get_file(body.input_file_id)
    if file_row is None:
        raise ApiError(404, f"No such File object: {body.input_file_id}. Upload the input file first "
                       "(files.create with purpose 'batch').", param="input_file_id", azure_code="notFound")
    status = render_file(file_row)["status"]
    if status != "processed":
        raise ApiError(400, f"The input file '{body.input_file_id}' is in '{status}' state. Only files with status "
                       "'Processed' are accepted for batch inferencing. Please check the file status and try again",
                       param="input_file_id", code="invalid_value", azure_code="invalidPayload")
    if file_row["purpose"] != "batch":
        raise ApiError(400, f"The input file '{body.input_file_id}' has purpose '{file_row['purpose']}'; a batch "
                       "needs a file uploaded with purpose 'batch'.", param="input_file_id",
                       code="invalid_value", azure_code="invalidPayload")
    if body.endpoint not in CHAT_ENDPOINTS[dialect]:
        allowed = "', '".join(CHAT_ENDPOINTS[dialect])
        raise ApiError(400, f"Invalid value: '{body.endpoint}'. This service runs batches for '{allowed}'.",
                       param="endpoint", code="invalid_value", azure_code="invalidPayload")
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
        faults=faults, fault_token_limit=int(fault_token_limit),
    )
    svc.worker.wake()
    return render_batch(row)


def _get_batch_row(svc: Service, batch_id: str) -> Any:
    row = svc.store.get_batch(batch_id)
    if row is None:
        raise ApiError(404, f"No such Batch object: {batch_id}", param="id", azure_code="notFound")
    return row


def retrieve_batch(request: Request, batch_id: str) -> dict[str, Any]:
    """``batches.retrieve``: live status and request counts."""
    return render_batch(_get_batch_row(_service(request), batch_id))


def list_batches(request: Request, after: str | None = None,
                 limit: int = Query(20, ge=1, le=100)) -> dict[str, Any]:
    """``batches.list``: newest first, ``after``/``limit`` pagination."""
    try:
        rows, more = _service(request).store.list_batches(after=after, limit=limit)
    except LookupError:
        raise _unknown_cursor(after, "batch") from None
    return render_list([render_batch(r) for r in rows], more)


def _unknown_cursor(after: str | None, kind: str) -> ApiError:
    """The 400 for a list ``after`` cursor that names no object."""
    return ApiError(400, f"Invalid 'after': no {kind} with id '{after}'. Pass the id of the last item of the "
                    "previous page, or leave 'after' out to start from the first page.",
                    param="after", code="invalid_value", azure_code="invalidPayload")


def cancel_batch(request: Request, batch_id: str) -> dict[str, Any]:
    """``batches.cancel``: ``validating``/``in_progress`` -> ``cancelling`` (answers 400, never 409, otherwise)."""
    svc = _service(request)
    row = _get_batch_row(svc, batch_id)
    if row["status"] == "cancelling":
        return render_batch(row)
    if not svc.store.transition(batch_id, ("validating", "in_progress"), "cancelling", cancelling_at=int(time.time())):
        row = _get_batch_row(svc, batch_id)
        raise ApiError(400, f"Cannot cancel a batch with status '{row['status']}'. Only validating or "
                       "in_progress batches can be cancelled.", param="batch_id", code="invalid_state",
                       azure_code="unexpectedEntityState")
    svc.worker.wake()
    return render_batch(_get_batch_row(svc, batch_id))


def _chat(svc: Service, dialect: Dialect, deployment: str | None, body: dict[str, Any]) -> dict[str, Any]:
    from batchkit.lint import lint_request_body

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
        raise ApiError(400, f"The chatCompletion operation does not work with the specified model, "
                       f"{dep.model_version.split('-20')[0]}. Please choose different model and try again. "
                       f"('{name}' is a Global Batch deployment: send it batch files, or use a standard "
                       "deployment for live calls.)", azure_code="OperationNotSupported")
    if body.get("stream"):
        raise ApiError(400, "Streaming is not supported by this service; send the request without 'stream'.",
                       param="stream", code="unsupported_parameter")
    for finding in lint_request_body(body, target=dialect):
        if finding.severity == "error":
            raise ApiError(400, finding.message, raw_body=finding.error_body())
    try:
        completion = svc.gate.complete(body, model=dep.model_version)
    except Exception as exc:
        status, err = getattr(exc, "status_code", None), getattr(exc, "body", None)
        if isinstance(status, int) and isinstance(err, dict):
            raise ApiError(status, str(err), raw_body=err if "error" in err else {"error": err}) from None
        log.exception("engine failed on a live chat call")
        raise ApiError(500, "The server had an error while processing your request. Sorry about that!",
                       type="server_error", azure_code="internalFailure") from None
    return decorate_completion(dialect, completion, dep.model_version)


def deployment_chat(request: Request, deployment: str, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """Azure classic live chat on a deployment (a Global Batch deployment refuses it)."""
    return _chat(_service(request), "azure", deployment, body)


def v1_chat(request: Request, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """Live chat with the model (deployment) named in the body."""
    return _chat(_service(request), _dialect(request), None, body)


def build_router(*, classic: bool, with_v1_chat: bool) -> APIRouter:
    """The file, batch and chat routes of one prefix."""
    deps = [Depends(require_api_version)] if classic else []
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
    if classic:
        r.add_api_route("/deployments/{deployment}/chat/completions", deployment_chat, methods=["POST"],
                        summary="Chat completion on a deployment")
    if with_v1_chat:
        r.add_api_route("/chat/completions", v1_chat, methods=["POST"], summary="Chat completion")
    return r


# ----- the application -----------------------------------------------------------------------------


def _make_engine(settings: Settings) -> Any:
    from .engines import create_engine

    return create_engine(settings.engine, **settings.engine_options)


def create_app(settings: Settings, engine_factory: Callable[[Settings], Any] = _make_engine) -> FastAPI:
    """Build the service for ``settings``; the store, engine and worker start with the app."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(settings.data_dir)
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
        try:
            yield
        finally:
            remove_service_record(record)
            worker.stop()
            close = getattr(engine, "close", None)
            if callable(close):
                close()
            store.close()

    app = FastAPI(title="localbatch", version="0.1.0", lifespan=lifespan,
                  description="A local Batch service that answers the openai SDK the way Azure OpenAI "
                              "(Global Batch) and OpenAI do.")

    @app.middleware("http")
    async def envelope(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        dialect, _classic = route_dialect(request.url.path)
        request.state.dialect = dialect or "openai"
        response: Response
        if dialect is not None and settings.api_key is not None:
            key = _key_of(request)
            if key is None or not hmac.compare_digest(key.encode(), settings.api_key.encode()):
                response = error_response(unauthorized(dialect), dialect)
                response.headers["x-request-id"] = str(uuid.uuid4())
                return response
        response = await call_next(request)
        response.headers.setdefault("x-request-id", str(uuid.uuid4()))
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc, _dialect(request))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
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
        else:
            err = ApiError(exc.status_code, str(exc.detail), azure_code=str(exc.status_code))
        return error_response(err, dialect)

    @app.get("/healthz", summary="Liveness: answers when the service is ready")
    def healthz(request: Request) -> dict[str, Any]:
        svc: Service = request.app.state.service
        return {"status": "ok", "engine": svc.engine_name, "pid": os.getpid(),
                "deployments": {d.name: d.kind for d in svc.settings.deployments}}

    app.include_router(build_router(classic=False, with_v1_chat=True), prefix="/openai/v1")
    app.include_router(build_router(classic=True, with_v1_chat=False), prefix="/openai")
    app.include_router(build_router(classic=False, with_v1_chat=True), prefix="/v1")
    return app


__all__ = ["create_app", "render_batch", "render_file", "route_dialect"]
