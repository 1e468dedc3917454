"""What the asset catalog shows of a lake table, under the metadata keys Dagster's conventions name:
`dagster/column_schema` (columns, types, nullability, rules), `dagster/table_name` (`<layer>.<table>`, the
name the lake's DuckDB views and the gates use), `dagster/uri` (the Delta table) and
`dagster/code_references` (where the asset and its declaration are written).

All of it is definition metadata, so the UI shows it before anything has run. The URI depends on the
lake root, a setting: it is added when the definitions load (`with_lake_uri`), never at import.
"""

import inspect
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg

from dagster_project import settings
from dagster_project.lib.bronze.catalog import CatalogColumn
from dagster_project.lib.lake import LAYERS, Lake, LakeError
from dagster_project.lib.sources import registry

TABLE_NAME = "dagster/table_name"
COLUMN_SCHEMA = "dagster/column_schema"
URI = "dagster/uri"
STORAGE_KIND = "dagster/storage_kind"
CODE_REFERENCES = "dagster/code_references"

D = TypeVar("D", dg.AssetSpec, dg.AssetsDefinition)


def column_schema(columns: Sequence[CatalogColumn]) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=c.name,
                type=c.type,
                description=c.description or None,
                constraints=dg.TableColumnConstraints(nullable=c.nullable, unique=c.unique, other=list(c.rules)),
                tags={"pii": ""} if c.pii else None,
            )
            for c in columns
        ]
    )


def table_metadata(layer: str, table: str, columns: dg.TableSchema | None = None) -> dict[str, Any]:
    """A lake table's name, storage and columns (the URI is added when the definitions load)."""
    return {
        TABLE_NAME: f"{layer}.{table}",
        STORAGE_KIND: "delta",
        **({COLUMN_SCHEMA: columns} if columns is not None else {}),
    }


def lake_table_uri(table_name: str, lake: Lake) -> str | None:
    """The Delta table a `<layer>.<table>` name stands for, if it names a lake layer."""
    layer, _, table = table_name.partition(".")
    return lake.table(layer, table) if layer in LAYERS and table else None


def with_lake_uri(definition: D) -> D:
    """`definition` with `dagster/uri` on every spec that names a lake table. Reads the lake root (a setting):
    call it when the definitions load. A root the platform cannot use gets no URI here; the runs then fail
    with the reason (`Lake.parse`). Lake URIs never carry credentials."""
    try:
        lake = Lake.parse(settings.lake_root())
    except LakeError:
        return definition

    def add(spec: dg.AssetSpec) -> dg.AssetSpec:
        name = spec.metadata.get(TABLE_NAME)
        uri = lake_table_uri(str(name), lake) if name is not None else None
        return spec.merge_attributes(metadata={URI: uri}) if uri and URI not in spec.metadata else spec

    return _map_specs(definition, add)


def code_reference(target: Any, label: str | None = None) -> dg.LocalFileCodeReference:
    """Where `target` (a module, class or function) is written, by file and line."""
    target = inspect.unwrap(target)  # a decorated function (a context manager, say) is written where it is
    line = None if inspect.ismodule(target) else inspect.getsourcelines(target)[1]
    return file_reference(Path(inspect.getsourcefile(target) or ""), line, label)


def file_reference(path: Path, line: int | None = None, label: str | None = None) -> dg.LocalFileCodeReference:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # code references are beta in 1.13, and the convention
        return dg.LocalFileCodeReference(file_path=str(path.resolve()), line_number=line, label=label)


def line_of(path: Path, text: str) -> int | None:
    """The first line of `path` holding `text` (1-based), if any."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if text in line:
            return number
    return None


def source_declaration(name: str) -> dg.LocalFileCodeReference:
    """Where the source `name` is declared (`lib/sources/registry.py`)."""
    path = Path(inspect.getsourcefile(registry) or "")
    return file_reference(path, line_of(path, f'name="{name}",'), "Source declaration")


def with_code_references(
    definition: D,
    references: Callable[[dg.AssetKey], Sequence[dg.LocalFileCodeReference]] | None = None,
) -> D:
    """`definition` with code references, as `dg.with_source_code_references` gives them (the function that
    computes an asset), followed by `references(key)` for each of its assets (its declaration, say)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        if isinstance(definition, dg.AssetsDefinition):
            [definition] = dg.with_source_code_references([definition])

        def add(spec: dg.AssetSpec) -> dg.AssetSpec:
            extra = list(references(spec.key)) if references else []
            if not extra:
                return spec
            existing = spec.metadata.get(CODE_REFERENCES)
            known = list(existing.code_references) if isinstance(existing, dg.CodeReferencesMetadataValue) else []
            value = dg.CodeReferencesMetadataValue(code_references=[*known, *extra])
            return spec.replace_attributes(metadata={**spec.metadata, CODE_REFERENCES: value})

        return _map_specs(definition, add)


def _map_specs(definition: D, func: Callable[[dg.AssetSpec], dg.AssetSpec]) -> D:
    if isinstance(definition, dg.AssetSpec):
        return func(definition)
    return definition.map_asset_specs(func)
