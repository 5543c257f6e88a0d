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

from batchkit.config import DEFAULT_LOCAL_KEY, display_path, project_root
from batchkit.errors import BatchkitError

NOTEBOOKS: tuple[str, ...] = ("01_author_requests.ipynb", "02_upload_and_poll.ipynb", "03_results_to_dataframe.ipynb")
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
    notebooks: Sequence[str] = NOTEBOOKS,
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
            for name in ("buildings.jsonl", "broken.jsonl", "cancel_demo.jsonl", "run.json"):
                (out_dir / name).unlink(missing_ok=True)
            print(f"Service at {handle.base_url}; re-executing notebooks 01 -> 03 in place ...", flush=True)
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
