"""Read the input table and the schema a run is built from.

* `read_table`: a CSV, Parquet or JSONL file -> a DataFrame (every column as read).
* `with_ids`: make sure every row has a custom_id: from a column, or generated and kept with the rows.
* `load_schema`: the schema parameter of notebook 01 -> a JSON schema dict or a pydantic model class:
  ``""`` (the buildings schema), a ``.json`` file, or ``package.module:ModelClass``.
* `file_sha256`: the content hash that identifies an input file in a run.
* `body_options`: notebook parameters such as `max_tokens` -> the extra body fields of every request.

The prompts themselves are made by `authoring.build_requests` (a column or a template).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from batchkit.errors import AuthoringError, ConfigError

#: The sample schema of the walkthrough (the seed's four string fields), used when no schema is named.
BUILDINGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "BuildingName": {"type": "string"},
        "HeightInFeet": {"type": "string"},
        "City": {"type": "string"},
        "Country": {"type": "string"},
    },
    "required": ["BuildingName", "HeightInFeet", "City", "Country"],
    "additionalProperties": False,
}

#: Table formats by file suffix.
TABLE_SUFFIXES: dict[str, str] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}

#: The column that holds generated ids when the table has none of its own.
GENERATED_ID_COLUMN = "custom_id"


def file_sha256(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits (read in 1 MiB pieces)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_table(path: str | Path) -> pd.DataFrame:
    """Read an input table: `.csv`, `.parquet` (or `.pq`) or `.jsonl` (one JSON object per line).

    CSV columns are read as text (ids such as ``007`` keep their zeros; a template sees what is in
    the file). Raises `AuthoringError` naming the file and what to do when it is missing, of an
    unknown kind, unreadable or empty.
    """
    source = Path(path)
    if not source.is_file():
        raise AuthoringError(f"No input table at {source}: set data_path to a CSV, Parquet or JSONL file.")
    kind = TABLE_SUFFIXES.get(source.suffix.lower())
    if kind is None:
        raise AuthoringError(
            f"{source.name}: unknown table format {source.suffix!r}; use .csv, .parquet or .jsonl "
            "(one JSON object per line)."
        )
    try:
        if kind == "csv":
            frame = pd.read_csv(source, dtype=str, keep_default_na=False)
        elif kind == "parquet":
            frame = pd.read_parquet(source)
        else:
            frame = pd.read_json(source, lines=True, dtype=False)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise AuthoringError(f"{source.name} cannot be read as {kind}: {exc}") from None
    if frame.empty:
        raise AuthoringError(f"{source.name} has no rows: a batch needs at least one request.")
    frame.columns = [str(c) for c in frame.columns]
    return frame.reset_index(drop=True)


def with_ids(frame: pd.DataFrame, id_column: str, *, prefix: str = "row-") -> tuple[pd.DataFrame, str]:
    """The table with a custom_id for every row, and the name of the column that holds it.

    Args:
        frame: the input table.
        id_column: the column holding each row's id; ``""`` generates ids (``row-1``, ``row-2``, ...
            by row position, zero-padded to one width) in a new ``custom_id`` column kept with the rows.
        prefix: the prefix of generated ids.

    Raises:
        AuthoringError: the column does not exist (the message lists the columns found), or an id
            is empty or repeated (naming it and both rows).
    """
    if not id_column:
        if GENERATED_ID_COLUMN in frame.columns:
            raise AuthoringError(
                f"id_column is empty (generate ids) but the table already has a {GENERATED_ID_COLUMN!r} column; "
                f"set id_column={GENERATED_ID_COLUMN!r} to use it."
            )
        width = len(str(len(frame)))
        ids = [f"{prefix}{n:0{width}d}" for n in range(1, len(frame) + 1)]
        return frame.assign(**{GENERATED_ID_COLUMN: ids}), GENERATED_ID_COLUMN
    if id_column not in frame.columns:
        raise AuthoringError(
            f"The table has no column {id_column!r} (columns: {', '.join(frame.columns)}). Set id_column to "
            f"the column that identifies each row, or to \"\" to generate ids."
        )
    ids = frame[id_column].map(lambda v: "" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v))
    empty = ids[ids == ""]
    if not empty.empty:
        raise AuthoringError(f"Row {empty.index[0]} has an empty {id_column!r}; every row needs an id.", row=int(empty.index[0]))
    repeated = ids[ids.duplicated(keep=False)]
    if not repeated.empty:
        first = repeated.iloc[0]
        rows = list(repeated[repeated == first].index[:2])
        raise AuthoringError(
            f"{id_column} {first!r} is used by rows {rows[0]} and {rows[1]}; each row needs its own id "
            f"(or set id_column to \"\" to generate ids).",
            custom_id=first,
            row=int(rows[1]),
        )
    return frame.assign(**{id_column: ids}), id_column


@dataclass(frozen=True)
class SchemaSource:
    """A schema as the user named it: the loaded schema or model, and where it came from.

    Attributes:
        schema: a JSON schema dict or a pydantic model class.
        source: ``"built-in buildings schema"``, the file path, or ``package.module:ModelClass``.
        name: a `json_schema.name` found in the file (a whole response_format), else None.
    """

    schema: Any
    source: str
    name: str | None = None

    @property
    def is_model(self) -> bool:
        """True when the schema is a pydantic model class."""
        return isinstance(self.schema, type) and hasattr(self.schema, "model_json_schema")

    def json_schema(self) -> dict[str, Any]:
        """The schema as a JSON schema dict (a model's `model_json_schema()`)."""
        return dict(self.schema.model_json_schema()) if self.is_model else dict(self.schema)


def load_schema(schema_path: str, *, root: Path | None = None) -> SchemaSource:
    """Load the schema named by notebook 01's `schema_path` parameter.

    Args:
        schema_path: ``""`` for the buildings schema; a path to a ``.json`` file (relative paths
            from `root`) holding a JSON schema, a `json_schema` block or a whole `response_format`;
            or ``package.module:ModelClass`` naming a pydantic model importable from this process.
        root: the folder relative paths start from (default: the current folder).

    Raises:
        ConfigError: the file or model cannot be found or read; the message says what to set.
    """
    text = schema_path.strip()
    if not text:
        return SchemaSource(dict(BUILDINGS_SCHEMA), "built-in buildings schema")
    if ":" in text and not text.lower().endswith(".json") and not Path(text).exists():
        return _load_model(text)
    path = Path(text)
    if not path.is_absolute() and root is not None:
        path = root / path
    if not path.is_file():
        raise ConfigError(
            f"schema_path={schema_path!r}: no such file. Give a .json file holding a JSON schema, or "
            "package.module:ModelClass naming a pydantic model, or \"\" for the buildings schema."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name} is not JSON ({exc}); schema_path must name a JSON schema file.") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path.name} holds a JSON {type(data).__name__}, not a schema object.")
    name: str | None = None
    if data.get("type") == "json_schema" and isinstance(data.get("json_schema"), Mapping):
        data = data["json_schema"]  # a whole response_format
    if "schema" in data and isinstance(data["schema"], Mapping) and "properties" not in data:
        name = data.get("name") if isinstance(data.get("name"), str) else None
        data = data["schema"]  # a json_schema block
    return SchemaSource(dict(data), schema_path, name)


def _load_model(spec: str) -> SchemaSource:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"schema_path={spec!r}: write package.module:ModelClass, e.g. myproject.schemas:Review.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"schema_path={spec!r}: cannot import {module_name!r} ({exc}). Install the package that holds "
            "the model in this environment (pip install -e .), or give a .json schema file."
        ) from None
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"schema_path={spec!r}: {module_name} has no {attr!r}.")
    if not (isinstance(target, type) and hasattr(target, "model_json_schema")):
        raise ConfigError(f"schema_path={spec!r} names a {type(target).__name__}, not a pydantic model class.")
    return SchemaSource(target, spec)


def body_options(*, max_tokens: int = 0, temperature: float = -1.0) -> dict[str, Any]:
    """The extra body fields notebook 01's parameters ask for: `max_tokens` above 0, `temperature` 0 or more.

    Unset values (0 tokens, a negative temperature) are left out, so the service's defaults apply.
    (`authoring.build_requests` names `max_tokens` `max_output_tokens` in Responses bodies.)
    """
    options: dict[str, Any] = {}
    if max_tokens and max_tokens > 0:
        options["max_tokens"] = int(max_tokens)
    if temperature is not None and temperature >= 0:
        options["temperature"] = float(temperature)
    return options
