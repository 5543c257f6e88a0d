"""`python -m batchkit walkthrough` (what `make run` calls): notebooks 01 -> 03 headless on the local service.

Starts the local Batch service on a free port with a fresh data folder under `out/`, runs the three
notebooks with papermill into `runs/` (the kernels see `BATCH_BACKEND=local` and the service's URL and
key), prints the final results table and stops the service, also when a notebook fails. It says at
the end that it ran on the local service, not on what `.env` configures. With `--configured` it
starts nothing and runs the notebooks on the backend `.env` (or the environment) configures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from batchkit.config import DEFAULT_LOCAL_KEY, display_path, project_root
from batchkit.errors import BatchkitError

#: Every notebook, in reading order (`make notebooks` refreshes them all).
NOTEBOOKS: tuple[str, ...] = ("01_author_requests.ipynb", "02_upload_and_poll.ipynb", "03_results_to_dataframe.ipynb",
                              "04_big_job.ipynb")
#: The walkthrough `make run` executes: table -> requests -> batch -> results.
WALKTHROUGH: tuple[str, ...] = NOTEBOOKS[:3]
ANSWER_FIELDS: tuple[str, ...] = ("BuildingName", "HeightInFeet", "City", "Country")
#: Variables cleared for the notebooks' kernels, so a developer's own keys never reach the local run.
FOREIGN_SETTINGS: tuple[str, ...] = (
    "AZURE_OPENAI_ENDPOINT",
    "AZURE_OPENAI_API_ENDPOINT",
    "AZURE_OPENAI_API_KEY",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_API_VERSION",
    "BATCH_DEPLOYMENT",
)

#: Kernel arguments for headless runs: the kernel's own log lines (a warning about its loopback
#: transport at start, the interrupt it gets at shutdown) are noise on the console, not results.
QUIET_KERNEL: tuple[str, ...] = ("--IPKernelApp.log_level=CRITICAL",)


class NotebookFailed(BatchkitError):
    """A notebook of the walkthrough failed; `output` is its executed copy, with the error in place."""

    def __init__(self, notebook: str, output: str, error: BaseException) -> None:
        super().__init__(f"notebooks/{notebook} failed; its executed copy, with the error in place, is "
                         f"{output}.\n{type(error).__name__}: {error}")
        self.notebook = notebook
        self.output = output


def local_environment(base_url: str, api_key: str) -> dict[str, str]:
    """The variables that point `connect()` at a running local service."""
    return {"BATCH_BACKEND": "local", "LOCALBATCH_URL": base_url, "LOCALBATCH_API_KEY": api_key}


def run_notebooks(
    root: Path,
    runs_dir: Path,
    *,
    parameters: dict[str, dict[str, object]] | None = None,
    notebooks: Sequence[str] = WALKTHROUGH,
) -> list[Path]:
    """Execute `notebooks` (from `root/notebooks`) in order with papermill into `runs_dir`.

    The kernels start in the notebooks folder and inherit this process's environment.
    Raises `NotebookFailed` (naming the notebook, its executed copy, and the failing cell's error)
    when a notebook fails; the later notebooks are not run.
    """
    import papermill

    runs_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in notebooks:
        target = runs_dir / name
        print(f"  running notebooks/{name} -> {display_path(target, root)}", flush=True)
        try:
            papermill.execute_notebook(
                str(root / "notebooks" / name),
                str(target),
                parameters=(parameters or {}).get(name, {}),
                cwd=str(root / "notebooks"),
                kernel_name="python3",
                progress_bar=False,
                log_output=False,
                extra_arguments=list(QUIET_KERNEL),
            )
        except Exception as exc:
            raise NotebookFailed(name, display_path(target, root), exc) from exc
        written.append(target)
    return written


def refresh_notebooks(root: Path, notebooks: Sequence[str] = NOTEBOOKS, *, timeout: int = 900) -> None:
    """Re-execute the notebooks in place, top to bottom, in order (the committed outputs).

    Uses nbclient directly (no papermill metadata), kernels started in the notebooks folder,
    execution counts 1..n. The caller provides the environment (a fresh local service).
    """
    import nbclient
    import nbformat

    for name in notebooks:
        path = root / "notebooks" / name
        notebook = nbformat.read(path, as_version=4)
        client = nbclient.NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
            record_timing=False,  # no per-cell timestamps in committed notebooks
            extra_arguments=list(QUIET_KERNEL),
        )
        client.execute()
        notebook.metadata.pop("widgets", None)  # widget state: large and different on every run
        for cell in notebook.cells:
            cell.metadata.pop("execution", None)  # timestamps of an earlier run with timing on
        nbformat.write(notebook, path)
        print(f"  refreshed notebooks/{name}", flush=True)


def clear_generated(out_dir: Path) -> None:
    """Remove what the notebooks generate under `out_dir` (runs, the big job, broken.jsonl), so a
    fresh run of them shows what a first run shows (no previous run to compare with)."""
    for name in ("runs", "big"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for name in ("broken.jsonl", "results.csv", "results.parquet"):
        (out_dir / name).unlink(missing_ok=True)


def wants_cancel_demo(show_cancel: str | bool, backend: str) -> bool:
    """Whether notebook 02 runs its cancel demo: `show_cancel` "local" (or True) on the local
    backend only, "yes" on any backend, "no" (or False) never.

    Raises:
        ValueError: another value (the message lists the choices).
    """
    choice = {True: "local", False: "no"}.get(show_cancel, show_cancel) if isinstance(show_cancel, bool) else show_cancel
    choice = str(choice).strip().lower()
    if choice not in ("local", "yes", "no"):
        raise ValueError(f"show_cancel={show_cancel!r}: use 'local' (the local service only), 'yes' or 'no'.")
    return choice == "yes" or (choice == "local" and backend == "local")


#: Timings of the service notebook 04 starts (seconds): short, so 10,000 requests take seconds.
DEMO_SERVICE_ARGS: tuple[str, ...] = ("--file-processing-delay", "0.2", "--validating-seconds", "0.3",
                                      "--finalizing-seconds", "0.2")


def start_demo_service(data_dir: Path, *, engine: str = "synthetic", extra_args: Sequence[str] = ()) -> Any:
    """Start a local service of its own for a demonstration (notebook 04): a free port, the synthetic
    engine, short timings, data in `data_dir`. It is stopped when this process ends, if not before.

    Returns the `local_service.LocalService`; `local_environment(s.base_url, s.api_key)` points
    `connect(env=...)` at it.
    """
    import atexit

    from batchkit.local_service import start_local_service

    handle = start_local_service(data_dir=data_dir, engine=engine, extra_args=[*DEMO_SERVICE_ARGS, *extra_args])
    atexit.register(handle.stop)
    return handle


#: The batch metadata key the local service reads its fault spec from (see docs/reliability.md).
FAULTS_KEY = "localbatch_faults"


def demo_faults(*, seed: int, http_error: float, truncated: float, refusal: float, expire_chunk: int = 0,
                token_limit_chunk: int = 0, expire_after: float = 0.6) -> dict[str, Any]:
    """The batch metadata of notebook 04's injected faults, as keyword arguments of `Run.prepare`.

    The first attempt of every chunk: HTTP 500 lines, truncated answers and refusals, each for the
    given share of requests (chosen by the local service from the seed and each custom_id); chunk
    `expire_chunk` also expires once `expire_after` of its requests have a result, and the first
    create of chunk `token_limit_chunk` is refused with `token_limit_exceeded`. Follow-up
    attempts: only the refusals (a new draw under the same seed: some rows are refused again).
    Only the local service reads these keys; a real service keeps them as plain metadata.
    """
    import json

    first = {"seed": seed, "http_error": http_error, "refusal": refusal, "truncated": truncated}
    chunks: dict[int, dict[str, str]] = {}
    for chunk in {c for c in (expire_chunk, token_limit_chunk) if c}:
        spec = dict(first)
        if chunk == expire_chunk:
            spec["expire_after"] = expire_after
        if chunk == token_limit_chunk:
            spec["token_limit_creates"] = 1
        chunks[chunk] = {FAULTS_KEY: json.dumps(spec, separators=(",", ":"))}
    return {
        "metadata": {FAULTS_KEY: json.dumps(first, separators=(",", ":"))},
        "chunk_metadata": chunks,
        "retry_metadata": {FAULTS_KEY: json.dumps({"seed": seed, "refusal": refusal}, separators=(",", ":"))},
    }


def advance_then_kill(run: Any, env: dict[str, str], *, when: str = "first batch finished", timeout: float = 300.0) -> str:
    """Advance `run` in a separate process (`python -m batchkit run advance`) and kill it (SIGKILL)
    at a point of the run's progress, as a dead kernel would be; returns what happened, in words.

    Args:
        run: the run (its folder is read while the other process writes it).
        env: variables pointing the process at the service (`local_environment(...)`).
        when: "first batch finished" (a batch of the run is terminal) or "first batch submitted".
        timeout: give up (and kill it anyway) after this many seconds.
    """
    import json
    import signal
    import subprocess

    from batchkit.jobs import TERMINAL_BATCH_STATUSES

    checks = {
        "first batch finished": lambda a: a.get("status") in TERMINAL_BATCH_STATUSES,
        "first batch submitted": lambda a: bool(a.get("batch_id")),
    }
    if when not in checks:
        raise ValueError(f"when={when!r}: use one of {', '.join(checks)}.")
    out_dir = run.folder.parent.parent
    command = [sys.executable, "-m", "batchkit", "run", "advance", "--out-dir", str(out_dir), "--run-id", run.id,
               "--interval", "0.2", "--max-interval", "0.5"]
    child_env = {**os.environ, **env}
    process = subprocess.Popen(command, env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    started = time.monotonic()
    reached = False
    try:
        while time.monotonic() - started < timeout and process.poll() is None:
            try:
                manifest = json.loads((run.folder / "manifest.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                manifest = {"chunks": []}
            attempts = [a for c in manifest["chunks"] for a in c["attempts"]]
            if any(checks[when](a) for a in attempts):
                reached = True
                break
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
    took = time.monotonic() - started
    if not reached:
        return f"The process ended by itself after {took:.0f}s (exit {process.returncode}) before: {when}."
    return (f"Killed the process (pid {process.pid}, SIGKILL) {took:.1f}s after it started, once the {when.split()[0]} "
            f"{' '.join(when.split()[1:])}.")


def service_counts(conn: Any, run: Any) -> Any:
    """Per chunk and attempt of `run`: how many uploads and batches the service lists for it.

    Counted on the service's own `files.list` (by the attempt's upload name) and `batches.list`
    (by the run id, chunk and attempt in the batch metadata); batches refused for the quota and
    created again are counted apart.
    """
    import pandas as pd

    from batchkit.run import META_ATTEMPT, META_CHUNK, META_RUN

    client = conn.client
    files = [f.filename for f in client.files.list(purpose="batch")]
    batches = [b for b in client.batches.list(limit=100) if (b.metadata or {}).get(META_RUN) == run.id]
    rows = []
    for chunk, attempt in run.attempts():
        mine = [b for b in batches if b.metadata.get(META_CHUNK) == str(chunk["chunk"])
                and b.metadata.get(META_ATTEMPT) == str(attempt["attempt"])]
        rows.append({"chunk": chunk["chunk"], "attempt": attempt["attempt"], "uploads": files.count(attempt["upload_name"]),
                     "batches": sum(1 for b in mine if b.id not in attempt.get("rejected_batches", [])),
                     "refused for quota": len(attempt.get("rejected_batches", [])) + attempt.get("quota_refusals", 0),
                     "status": attempt.get("status")})
    return pd.DataFrame(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the walkthrough; returns the exit code (0 when every notebook ran)."""
    parser = argparse.ArgumentParser(prog="python -m batchkit walkthrough", description=__doc__)
    parser.add_argument("--keep-service", action="store_true", help="leave the local service running at the end")
    parser.add_argument("--configured", action="store_true",
                        help="run on the backend .env configures (Azure, OpenAI or local) instead of a fresh local service")
    parser.add_argument("--runs", default="runs", help="folder for the executed notebooks (default: runs)")
    parser.add_argument(
        "--refresh-notebooks",
        action="store_true",
        help="instead of papermill runs, re-execute notebooks/*.ipynb in place (their committed outputs)",
    )
    args = parser.parse_args(list(argv or []))

    from batchkit.local_service import start_local_service

    root = project_root()
    if args.configured:
        return _run_configured(root, args.runs)
    out_dir = root / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="localbatch-", dir=out_dir))
    started = time.monotonic()
    print(f"Starting the local Batch service (data in {data_dir.relative_to(root)}/) ...", flush=True)
    handle = start_local_service(data_dir=data_dir, api_key=DEFAULT_LOCAL_KEY)
    try:
        for name in FOREIGN_SETTINGS:  # empty rather than removed, so a .env cannot fill them in
            os.environ[name] = ""
        os.environ.update(local_environment(handle.base_url, handle.api_key))
        if args.refresh_notebooks:
            clear_generated(out_dir)
            print(f"Service at {handle.base_url}; re-executing notebooks 01 -> 04 in place ...", flush=True)
            refresh_notebooks(root)
            return 0
        print(f"Service at {handle.base_url}; running notebooks 01 -> 03 into {args.runs}/ ...", flush=True)
        run_notebooks(root, root / args.runs)
    except Exception as exc:  # report what failed, then stop the service below
        print(f"The walkthrough failed: {exc if isinstance(exc, NotebookFailed) else f'{type(exc).__name__}: {exc}'}",
              file=sys.stderr)
        return 1
    finally:
        if args.keep_service:
            print(f"The service keeps running at {handle.base_url} (pid {handle.pid}).")
        else:
            handle.stop()
            shutil.rmtree(data_dir, ignore_errors=True)

    import pandas as pd

    from batchkit.results import answer_table

    results = pd.read_parquet(out_dir / "results.parquet")
    table = answer_table(results, [f for f in ANSWER_FIELDS if f in results.columns])
    print()
    print(table.to_string(index=False))
    print()
    counts = results["outcome"].value_counts().to_dict()
    print(f"Outcomes: {counts}. Took {time.monotonic() - started:.0f}s. Full table: out/results.csv")
    print(LOCAL_RUN_NOTE)
    return 0


#: What `make run` says at the end of a run on the local service.
LOCAL_RUN_NOTE = (
    "This run used a local Batch service started for it (a small local model: answers follow the schema, "
    "facts may be wrong); .env was not read. To run the same notebooks against Azure, fill in the Azure "
    "block of .env (see .env.example) and run: .venv/bin/python -m batchkit walkthrough --configured"
)


def _run_configured(root: Path, runs: str) -> int:
    """Run the notebooks on the backend `.env` / the environment configures (nothing is started here)."""
    from batchkit.config import load_settings

    try:
        settings = load_settings()
    except BatchkitError as exc:
        print(f"The walkthrough cannot start: {exc}", file=sys.stderr)
        return 1
    print(f"Running notebooks 01 -> 03 on the configured backend ({settings.backend}, {settings.endpoint}) "
          f"into {runs}/ ...", flush=True)
    try:
        run_notebooks(root, root / runs)
    except Exception as exc:
        print(f"The walkthrough failed: {exc if isinstance(exc, NotebookFailed) else f'{type(exc).__name__}: {exc}'}",
              file=sys.stderr)
        return 1
    print(f"Done on {settings.backend}. Executed notebooks in {runs}/, results in out/results.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
