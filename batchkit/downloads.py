"""Verified downloads of a batch's result files.

A result file is trusted only when its length equals its file object's `bytes` and its lines match
the batch's `request_counts`; a short or inconsistent download is fetched again, then refused with
`DownloadError`, never returned as partial. `download_results` gives the checked files of a
finished batch (`results.ResultFiles`, which `parse_results` streams); `download_input_lines`
reads a batch's requests back from its input file. This is the one implementation of both
(`batchkit.results` offers the same functions).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from batchkit.errors import DownloadError, ResultsError


def download_verified(
    client: Any,
    file_id: str,
    *,
    kind: str = "output",
    counts: Mapping[str, Any] | None = None,
    status: str | None = None,
    batch_id: str | None = None,
    caller: Any = None,
    tries: int = 2,
) -> bytes:
    """The bytes of a result file, checked; a short or inconsistent download is fetched again, then refused.

    Checks: the length equals the file object's `bytes`; the output file has one line per
    completed request (`request_counts.completed`); the error file has one line per failed
    request (`request_counts.failed`), or, for an expired or cancelled batch, one per request that
    did not succeed (either count is accepted: the services differ in whether they count not-run
    requests as failed).

    Raises:
        DownloadError: still wrong after `tries` downloads; names the file, the batch and the numbers.
    """
    from batchkit.jobs import Resilient

    caller = caller or Resilient()
    counts = dict(counts or {})
    problem = ""
    for _ in range(max(tries, 1)):
        info = caller.call(lambda: client.files.retrieve(file_id), what=f"retrieve {file_id}", batch_id=batch_id)
        data = caller.call(lambda: client.files.content(file_id).content, what=f"download {file_id}", batch_id=batch_id)
        problem = _download_problem(data, int(getattr(info, "bytes", 0) or 0), kind, counts, status)
        if not problem:
            return data
    raise DownloadError(
        f"The {kind} file {file_id} of batch {batch_id} came back wrong {tries} times ({problem}); it was not "
        "saved. Run this again later; if it persists, download it by hand with client.files.content and check it.",
        batch_id=batch_id, file_id=file_id)


def _download_problem(data: bytes, expected_bytes: int, kind: str, counts: Mapping[str, Any], status: str | None) -> str:
    """Why a downloaded result file is not to be trusted ('' when it is fine)."""
    if expected_bytes and len(data) != expected_bytes:
        return f"{len(data):,} bytes, the file object says {expected_bytes:,}"
    if data and not data.endswith(b"\n") and b"\n" in data.rstrip(b"\n"):
        last = data.rsplit(b"\n", 1)[-1]
        try:
            json.loads(last)
        except ValueError:
            return "the last line is cut off"
    lines = count_lines(data)
    completed, failed, total = (int(counts.get(k) or 0) for k in ("completed", "failed", "total"))
    if not total:
        return ""
    if kind == "output" and lines != completed:
        return f"{lines:,} lines, request_counts.completed is {completed:,}"
    if kind == "error":
        allowed = {failed}
        if status in ("expired", "cancelled"):
            allowed.add(total - completed)
        if lines not in allowed:
            return f"{lines:,} lines, request_counts.failed is {failed:,}"
    return ""


def count_lines(data: bytes) -> int:
    """The non-blank lines of JSONL bytes."""
    return sum(1 for raw in data.splitlines() if raw.strip())


def download_results(client: Any, batch: Any, *, caller: Any = None) -> Any:
    """Download, check and parse the output and error files of a finished batch (`results.ResultFiles`).

    Args:
        client: the SDK client.
        batch: a `Batch` or a batch id (then retrieved first).
        caller: a `jobs.Resilient` for the calls (default: one with the standard outage budget).

    A missing output file (nothing succeeded, or the batch failed) gives no output lines; a missing
    or empty error file gives no error lines. Raises `DownloadError` for a file that stays wrong.
    The result holds the verified bytes: `parse_results` streams them, and its ``output_lines`` /
    ``error_lines`` are parsed when first read (a line that is not JSON is named then).
    """
    from batchkit.results import ResultFiles

    if isinstance(batch, str):
        batch = client.batches.retrieve(batch)
    rc = getattr(batch, "request_counts", None)
    counts = {name: getattr(rc, name, 0) for name in ("total", "completed", "failed")} if rc is not None else {}
    output_id = getattr(batch, "output_file_id", None) or None
    error_id = getattr(batch, "error_file_id", None) or None
    result = ResultFiles(batch_id=batch.id, status=batch.status, output_file_id=output_id, error_file_id=error_id)
    for kind, file_id in (("output", output_id), ("error", error_id)):
        if file_id:
            data = download_verified(client, file_id, kind=kind, counts=counts, status=str(batch.status),
                                     batch_id=batch.id, caller=caller)
            setattr(result, f"{kind}_data", data)
    return result


def download_input_lines(client: Any, batch: Any, *, caller: Any = None) -> list[dict[str, Any]]:
    """The request lines of a batch, read back from its input file (ids in input order, schemas);
    the download is checked against the file object's `bytes` like a result file's."""
    from batchkit.results import parse_jsonl

    if isinstance(batch, str):
        batch = client.batches.retrieve(batch)
    file_id = getattr(batch, "input_file_id", None)
    if not file_id:
        raise ResultsError(f"Batch {batch.id} has no input_file_id; pass the input table instead.")
    data = download_verified(client, file_id, kind="input", batch_id=batch.id, caller=caller)
    return parse_jsonl(data, source=f"input file {file_id}")
