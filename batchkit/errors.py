"""The exceptions batchkit raises. Each says what went wrong and what to do next."""

from __future__ import annotations


class BatchkitError(Exception):
    """Base class of every error batchkit raises on purpose."""


class ConfigError(BatchkitError):
    """A setting is missing or inconsistent. The message names the variable and the fix."""

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        super().__init__(message)
        self.variable = variable


class AuthoringError(BatchkitError):
    """Input rows or a schema cannot become valid request lines (e.g. duplicate custom_id)."""

    def __init__(self, message: str, *, custom_id: str | None = None, row: int | None = None) -> None:
        super().__init__(message)
        self.custom_id = custom_id
        self.row = row


class LintError(BatchkitError):
    """A batch file or schema has findings of severity 'error'; `findings` lists them."""

    def __init__(self, message: str, findings: list | None = None) -> None:
        super().__init__(message)
        self.findings = list(findings or [])


class JobError(BatchkitError):
    """A file or batch operation failed; carries the file or batch id."""

    def __init__(self, message: str, *, batch_id: str | None = None, file_id: str | None = None) -> None:
        super().__init__(message)
        self.batch_id = batch_id
        self.file_id = file_id


class PollTimeout(JobError):
    """Polling gave up before the file or batch reached a terminal status."""


class ServiceUnreachable(JobError):
    """The service did not answer for longer than the outage budget; the batch keeps running there."""


class DownloadError(JobError):
    """A result file came back short or inconsistent with its file object and the batch's counts."""


class RunError(BatchkitError):
    """A run cannot be opened, advanced or read; carries the run id."""

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


class RunNotFinished(RunError):
    """The run's batches are not all in a terminal status (and partial results were not asked for)."""


class RunFailed(RunError):
    """A batch of the run failed validation, or more rows stayed unresolved than allowed."""


class ResultsError(BatchkitError):
    """Result files cannot be read or joined back to the input rows."""

    def __init__(self, message: str, *, custom_id: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.custom_id = custom_id
        self.line = line
