"""Batch validation: the ``validating`` step, done with batchkit's validators (one implementation).

``validate_input`` reads an input file once through batchkit's file lint and either returns the
batch-level errors (the batch fails) or an index of the requests (custom_id, line, byte range in the
file), with a prepared 400 body for each line the model endpoint would reject, and the input-token
count for the quota.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Settings
from .dialects import Dialect


@dataclass
class BatchError:
    """One entry of a failed batch's ``errors.data``."""

    code: str
    message: str
    param: str | None = None
    line: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of the Batch API's BatchError."""
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass
class ParsedRequest:
    """One valid input line: its custom_id, physical line, where its bytes are in the input file
    (``offset``, ``length``) and, if the model endpoint would reject it, the 400 body."""

    custom_id: str
    line: int
    offset: int
    length: int
    reject: dict[str, Any] | None = None


@dataclass
class Validation:
    """Outcome of validating one input file."""

    errors: list[BatchError] = field(default_factory=list)
    requests: list[ParsedRequest] = field(default_factory=list)
    model: str | None = None
    tokens: int = 0


def lint_deployments(settings: Settings, dialect: Dialect) -> dict[str, str]:
    """The deployment map the linter checks ``model`` against.

    Azure: each deployment with its kind (a standard deployment cannot run batches). OpenAI has no
    deployment kinds: every declared name is a model that accepts batches.
    """
    if dialect == "azure":
        return {d.name: d.kind for d in settings.deployments}
    return {d.name: "globalbatch" for d in settings.deployments}


def validate_input(path: Path, *, dialect: Dialect, endpoint: str, settings: Settings) -> Validation:
    """Validate the batch input file at ``path`` for a batch created with ``endpoint``.

    One streaming pass: every line goes through batchkit's file lint (`BatchFileLinter`, the code
    of ``python -m batchkit lint``), its byte range is noted (the worker reads a request's body from
    the file when it runs it, so bodies are never copied), and its body's input tokens are counted
    for the quota. Batch-scope findings of severity ``error`` become ``errors``; request-scope ones
    become a 400 body on their line's request. Warnings are ignored (the real services accept those
    files).
    """
    from array import array

    import orjson

    from batchkit.estimate import BodyTokenCounter
    from batchkit.lint import BatchFileLinter, _bounded_lines

    result = Validation()
    rejects: dict[int, dict[str, Any]] = {}
    linter = BatchFileLinter(target=dialect, deployments=lint_deployments(settings, dialect), endpoint=endpoint)
    counter = BodyTokenCounter()
    offsets = array("q", [0])  # by line number (1-based); line n's bytes: offsets[n - 1] .. offsets[n]
    feed, loads, add, add_line = linter.feed, orjson.loads, counter.add, counter.add_line
    position = 0

    def note(findings: Any) -> None:
        for finding in findings:
            if finding.severity != "error":
                continue
            if finding.scope == "batch":
                result.errors.append(BatchError(finding.code, finding.message, finding.param, finding.line))
            elif finding.line is not None and finding.line not in rejects:
                rejects[finding.line] = finding.error_body()

    with path.open("rb") as handle:
        for raw in _bounded_lines(handle):
            size = getattr(raw, "size", None) or len(raw)  # an oversized line is skipped, not read
            position += size
            offsets.append(position)
            found = feed(raw)
            if found:
                note(found)
            if result.errors:
                continue  # the batch fails: the rest is linted for its findings only
            if add_line(raw):
                continue
            try:
                body = loads(raw)["body"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                try:
                    body = json.loads(raw)["body"]
                except (ValueError, KeyError, TypeError):
                    body = None  # a blank line, or a line the lint judged
            if isinstance(body, dict):
                add(body)
    note(linter.close())
    if result.errors:
        return result
    result.model = linter.first_model
    result.tokens = counter.total
    result.requests = [
        ParsedRequest(custom_id, line, offsets[line - 1], offsets[line] - offsets[line - 1], rejects.get(line))
        for custom_id, line in linter.seen.items()
    ]
    return result
