"""Batch validation: the ``validating`` step, done with batchkit's validators (one implementation).

``validate_input`` reads an input file once through ``batchkit.lint.lint_batch_file`` and either
returns the batch-level errors (the batch fails) or the parsed requests, with a prepared 400 body
for each line the model endpoint would reject, and the input-token count for the quota.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
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
    """One valid input line: its custom_id, physical line, body and, if rejected, the 400 body."""

    custom_id: str
    line: int
    body: dict[str, Any]
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


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            yield number, raw


def validate_input(path: Path, *, dialect: Dialect, endpoint: str, settings: Settings) -> Validation:
    """Validate the batch input file at ``path`` for a batch created with ``endpoint``.

    Batch-scope findings of severity ``error`` become ``errors``; request-scope ones become a
    400 body on their line's request. Warnings are ignored (the real services accept those files).
    """
    from batchkit.estimate import count_body_tokens
    from batchkit.lint import lint_batch_file

    result = Validation()
    rejects: dict[int, dict[str, Any]] = {}
    for finding in lint_batch_file(
        path, target=dialect, deployments=lint_deployments(settings, dialect), endpoint=endpoint
    ):
        if finding.severity != "error":
            continue
        if finding.scope == "batch":
            result.errors.append(BatchError(finding.code, finding.message, finding.param, finding.line))
        elif finding.line is not None and finding.line not in rejects:
            rejects[finding.line] = finding.error_body()
    if result.errors:
        return result

    for number, raw in _lines(path):
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
            if not text:
                continue
            item = json.loads(text)
            custom_id, body = item["custom_id"], item["body"]
        except (ValueError, KeyError, TypeError):
            # The linter reports these as batch errors; this guards against a file that changed.
            result.errors.append(BatchError("invalid_json_line", "This line is not parseable as valid JSON.",
                                            None, number))
            return result
        result.requests.append(ParsedRequest(str(custom_id), number, body, rejects.get(number)))
        if result.model is None and isinstance(body, dict):
            result.model = str(body.get("model"))
        if isinstance(body, dict):
            result.tokens += count_body_tokens(body)
    return result

