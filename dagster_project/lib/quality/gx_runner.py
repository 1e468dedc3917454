"""Run a Great Expectations suite on a DuckDB table, view or Delta partition through GX's SQL engine.

The result is a small `GateResult` that is safe to log and to attach as asset-check metadata:

- Counts come from GX (`unexpected_count`, `element_count`, `observed_value`).
- Samples never carry raw PII. For failing rows a sample holds only the values of `sample_columns`, which
  the caller chooses among key columns and tokens, at most `SAMPLE_SIZE` rows. Without `sample_columns`, a
  column check's sample holds the column's own unexpected values, and only when that column is not PII
  (`pii_columns`, by default every column a source declaration marks `pii=True`); a row-query check then has no
  sample. Values of a PII column are never reported as `observed` either, and quoted literals are cut out
  of error messages, since database errors can quote data.

Gates are declared as plain `rules.Rule`s; they become GX expectations here, when a gate runs, and this
module imports Great Expectations, DuckDB and deltalake only then, so that declaring gates (and loading the
code location) does not pay for them. GX `Expectation` objects are accepted as they are.

Validation runs in two passes so that a passing suite costs what its checks cost. The first pass computes
counts only (GX's `partial_unexpected_count=0` turns its sample queries into `LIMIT 0`). Only when
expectations fail, a second pass re-runs just those to fetch a sample.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dagster_project.lib.lake import Lake, LakeError
from dagster_project.lib.quality.rules import Rule, full_match

if TYPE_CHECKING:
    import duckdb
    from great_expectations.core import ExpectationValidationResult
    from great_expectations.datasource.fluent.interfaces import Batch
    from great_expectations.expectations import Expectation

SAMPLE_SIZE = 5

_POSITION = "gate_position"
_COUNTS_ONLY = {"result_format": "SUMMARY", "partial_unexpected_count": 0}
_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")


@dataclass
class ExpectationOutcome:
    expectation: str  # the expectation's description when it has one, else its GX type
    column: str | None
    success: bool
    unexpected_count: int | None
    element_count: int | None
    sample: list = field(default_factory=list)
    observed: object | None = None
    type: str = ""  # the GX expectation type, e.g. expect_column_values_to_be_in_set
    # The rule's arguments (accepted values, pattern, bounds, expected count), constants of a declaration; on
    # a PII column only numbers. A row query is left out: its description says what it checks.
    arguments: dict[str, Any] = field(default_factory=dict)

    @property
    def unexpected_percent(self) -> float | None:
        if self.unexpected_count is None or not self.element_count:
            return None
        return round(100 * self.unexpected_count / self.element_count, 4)

    def describe(self) -> dict[str, Any]:
        """The outcome as plain JSON: what was checked, and what was found (counts, observed value, sample)."""
        found = {
            "unexpected_count": self.unexpected_count,
            "element_count": self.element_count,
            "unexpected_percent": self.unexpected_percent,
            "observed": _plain(self.observed),
            "sample": self.sample,
        }
        return {
            "expectation": self.expectation,
            "type": self.type,
            "column": self.column,
            "arguments": self.arguments,
            "success": self.success,
            **{k: v for k, v in found.items() if v not in (None, [])},
        }


@dataclass
class GateResult:
    suite: str
    success: bool
    outcomes: list[ExpectationOutcome]
    seconds: float
    relation: str | None = None  # what was validated: a lake table `<layer>.<table>`, or a DuckDB relation
    table_uri: str | None = None  # the Delta table read, for a lake table (never with credentials)
    predicate: str | None = None  # the filter of the rows validated, with `?` placeholders

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def statistics(self) -> dict[str, int]:
        """Counts as GX's validation result names them."""
        failed = len(self.failed)
        return {
            "evaluated_expectations": len(self.outcomes),
            "successful_expectations": len(self.outcomes) - failed,
            "unsuccessful_expectations": failed,
        }

    def validation(self) -> dict[str, Any]:
        """The validation result as plain JSON, in the shape of GX's own (suite, success, statistics, one
        result per expectation) and as safe as the outcomes are: samples of keys and tokens only."""
        return {
            "suite": self.suite,
            "success": self.success,
            "batch": {
                k: v
                for k, v in (("relation", self.relation), ("table_uri", self.table_uri), ("predicate", self.predicate))
                if v is not None
            },
            "statistics": self.statistics(),
            "seconds": round(self.seconds, 3),
            "results": [o.describe() for o in self.outcomes],
        }

    def summary(self) -> str:
        head = f"{self.suite}: {len(self.outcomes) - len(self.failed)}/{len(self.outcomes)} expectations passed"
        details = []
        for o in self.failed:
            what = f"{o.expectation}({o.column})" if o.column else o.expectation
            if o.unexpected_count is not None:
                of = f" of {o.element_count}" if o.element_count is not None else ""
                what += f": {o.unexpected_count} unexpected{of}"
            elif o.observed is not None:
                what += f": observed {o.observed}"
            details.append(what)
        failed = f"; failed: {', '.join(details)}" if details else ""
        return f"{head} in {self.seconds:.2f}s{failed}"


def default_pii_columns() -> frozenset[str]:
    """Every column a source declaration marks as PII (read when a gate runs, not at import)."""
    from dagster_project.lib.sources.registry import pii_columns

    return pii_columns()


def to_expectation(rule: Rule | Expectation) -> Expectation:
    """The GX expectation that checks `rule` (a GX expectation is returned as it is)."""
    import great_expectations.expectations as gxe

    if not isinstance(rule, Rule):
        return rule
    match rule.kind:
        case "not_null":
            return gxe.ExpectColumnValuesToNotBeNull(column=rule.column)
        case "unique":
            return gxe.ExpectColumnValuesToBeUnique(column=rule.column)
        case "unique_combination":
            return gxe.ExpectCompoundColumnsToBeUnique(column_list=list(rule.columns))
        case "accepted_values":
            return gxe.ExpectColumnValuesToBeInSet(column=rule.column, value_set=list(rule.values))
        case "matches_regex":
            # GX matches with search semantics (DuckDB regexp_matches); the rule is a whole-value match.
            return gxe.ExpectColumnValuesToMatchRegex(column=rule.column, regex=full_match(rule.pattern or ""))
        case "between":
            return gxe.ExpectColumnValuesToBeBetween(
                column=rule.column, min_value=rule.min_value, max_value=rule.max_value
            )
        case "columns_present":
            return gxe.ExpectTableColumnsToMatchSet(column_set=list(rule.columns), exact_match=False)
        case "row_count":
            return gxe.ExpectTableRowCountToEqual(value=rule.count)
        case "unexpected_rows":
            return gxe.UnexpectedRowsExpectation(description=rule.description, unexpected_rows_query=rule.query)
    raise ValueError(f"no GX expectation for rule kind {rule.kind!r}")


def validate_duckdb(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    suite_name: str,
    expectations: Sequence[Rule | Expectation],
    *,
    sample_columns: Sequence[str] | None = None,
    pii_columns: Iterable[str] | None = None,
) -> GateResult:
    """Validate a table or view on an open DuckDB connection (`relation` is `name` or `schema.name`).

    `con` must not be inside an open transaction; it is left open. `pii_columns` defaults to every
    column a source declares PII.
    """
    from dagster_project.lib.quality import gx_duckdb

    start = time.perf_counter()
    expectations = [to_expectation(e) for e in expectations]
    pii = frozenset(default_pii_columns() if pii_columns is None else pii_columns)
    schema, _, table = relation.rpartition(".")
    context = gx_duckdb.ephemeral_context()
    datasource = gx_duckdb.add_datasource(context, "duckdb", con)
    with warnings.catch_warnings():
        # GX 1.x deprecates schema_name in favour of a schema fixed by the connection; one DuckDB
        # connection serves every schema of the warehouse, so the table asset names it.
        warnings.simplefilter("ignore", DeprecationWarning)
        asset = datasource.add_table_asset(name=relation, table_name=table, schema_name=schema or None)
    batch = asset.add_batch_definition_whole_table("whole_table").get_batch()

    results = _validate(batch, suite_name, expectations, _COUNTS_ONLY)
    samples = _samples(batch, suite_name, expectations, results, list(sample_columns or []), pii)
    outcomes = [_outcome(r, samples.get(i, []), pii) for i, r in enumerate(results)]
    return GateResult(
        suite=suite_name,
        success=all(o.success for o in outcomes),
        outcomes=outcomes,
        seconds=time.perf_counter() - start,
        relation=relation,
    )


def validate_lake(
    lake: Lake,
    relation: str,
    suite_name: str,
    expectations: Sequence[Rule | Expectation],
    *,
    predicate_sql: str | None = None,
    params: Sequence[object] | None = None,
    sample_columns: Sequence[str] | None = None,
    pii_columns: Iterable[str] | None = None,
) -> GateResult:
    """Validate a table of the lake (`relation` is `<layer>.<table>`, e.g. `silver.stg_acme__customers`), or
    the rows of it that `predicate_sql` selects (e.g. `business_date = ?`).

    The table is read in place by an in-memory DuckDB (`delta_scan`): nothing is copied, a predicate on the
    partition column reads only those partitions, only the columns a query needs are decoded, and GX
    computes the counts of a passing suite in a single aggregate scan. Only a failing suite scans again,
    to fetch its samples. `predicate_sql` is SQL written by the caller with `?` placeholders; values go in
    `params`. The other lake tables a rule reads (`Rule.reads`) are views by their `<layer>.<table>` name,
    read in place too; a bronze table nothing was written to yet reads as empty, as it does in dbt.
    """
    layer, _, table = relation.partition(".")
    start = time.perf_counter()
    con = lake.connect()
    try:
        create_batch_view(con, lake, relation, expectations, predicate_sql, params)
        result = validate_duckdb(
            con, "batch", suite_name, expectations, sample_columns=sample_columns, pii_columns=pii_columns
        )
    finally:
        con.close()
    result.seconds = time.perf_counter() - start
    result.relation, result.table_uri, result.predicate = relation, lake.table(layer, table), predicate_sql
    return result


def create_batch_view(
    con: duckdb.DuckDBPyConnection,
    lake: Lake,
    relation: str,
    expectations: Sequence[Rule | Expectation],
    predicate_sql: str | None = None,
    params: Sequence[object] | None = None,
) -> None:
    """The view `batch` on `con`: the rows of lake table `relation` that `predicate_sql` selects, read in place at
    each query; and views of the other lake tables the rules read (`Rule.reads`)."""
    where = f" WHERE {bind_literals(con, predicate_sql, params or [])}" if predicate_sql else ""
    # A view holds no prepared parameters, so the values go in as typed literals. (A relation that binds them,
    # `con.sql(query, params=...)`, runs the query at once: the whole partition in memory, 3.7 s of a 5.2 s
    # bronze gate at 10M rows.)
    con.execute(f"CREATE TEMP VIEW batch AS SELECT * FROM {lake.duckdb_scan(lake.table(*relation.split('.')))}{where}")
    for other in sorted({r for e in expectations if isinstance(e, Rule) for r in e.reads}):
        _attach(con, lake, other)


_STRING_LITERAL = re.compile(r"('(?:[^']|'')*')")


def bind_literals(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object]) -> str:
    """`sql` with each `?` placeholder (outside string literals) replaced by the next of `params` as a literal of
    its DuckDB type, e.g. `'2025-11-05'::DATE`; DuckDB itself renders the value and names its type."""
    parts = _STRING_LITERAL.split(sql)  # string literals at the odd positions
    placeholders = sum(part.count("?") for part in parts[::2])
    if placeholders != len(params):
        raise ValueError(f"{sql!r} has {placeholders} placeholders for {len(params)} values")
    values = iter(params)
    for i in range(0, len(parts), 2):
        pieces = parts[i].split("?")
        parts[i] = pieces[0] + "".join(_literal(con, next(values)) + piece for piece in pieces[1:])
    return "".join(parts)


def _literal(con: duckdb.DuckDBPyConnection, value: object) -> str:
    if value is None:
        return "NULL"
    text, type_ = con.execute("SELECT CAST($1 AS VARCHAR), typeof($1)", [value]).fetchone()  # type: ignore[misc]
    return "'" + text.replace("'", "''") + "'::" + type_


def _attach(con: duckdb.DuckDBPyConnection, lake: Lake, relation: str) -> None:
    """A view `<layer>.<table>` over that Delta table of the lake (`relation` is checked by `rules`)."""
    from deltalake import DeltaTable

    layer, _, table = relation.partition(".")
    uri = lake.table(layer, table)
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {layer}")
    if DeltaTable.is_deltatable(uri, storage_options=lake.delta_options()):
        con.execute(f"CREATE VIEW {relation} AS SELECT * FROM {lake.duckdb_scan(uri)}")
        return
    from dagster_project.lib.sources.registry import SOURCES

    if layer != "bronze" or table not in SOURCES:
        raise LakeError(f"a gate reads {relation}, which is not a table of the lake")
    from dagster_project.lib.bronze.contract import bronze_schema

    con.register("_gate_empty", bronze_schema(SOURCES[table]).empty_table())
    con.execute(f"CREATE TABLE {relation} AS SELECT * FROM _gate_empty")
    con.unregister("_gate_empty")


def _validate(
    batch: Batch, suite_name: str, expectations: Sequence[Expectation], result_format: dict
) -> list[ExpectationValidationResult]:
    """GX's results, in the order of `expectations` (GX itself returns them grouped by domain)."""
    import great_expectations as gx

    from dagster_project.lib.quality import gx_duckdb

    # A suite binds its expectations, so it gets copies; each is tagged with its position.
    tagged = [e.copy(update={"meta": {**(e.meta or {}), _POSITION: i}}) for i, e in enumerate(expectations)]
    suite = gx.ExpectationSuite(name=suite_name, expectations=tagged)
    gx_duckdb.forget_shared_results(batch.data.execution_engine)
    with gx_duckdb.configurations_built_once():
        results = batch.validate(suite, result_format=result_format).results
    return sorted(results, key=lambda r: r.expectation_config.meta[_POSITION])


def _samples(
    batch: Batch,
    suite_name: str,
    expectations: Sequence[Expectation],
    results: list[ExpectationValidationResult],
    sample_columns: list[str],
    pii: frozenset[str],
) -> dict[int, list]:
    """A PII-free sample for each failed expectation, by position, from a second pass over those alone."""
    from great_expectations.expectations import UnexpectedRowsExpectation

    failed = [i for i, r in enumerate(results) if not r.success and not _raised(r)]
    row_checks = [i for i in failed if isinstance(expectations[i], UnexpectedRowsExpectation)]
    column_checks = [
        i
        for i in failed
        if i not in row_checks
        and results[i].result.get("unexpected_count")
        and (sample_columns or _column(results[i]) not in pii)
    ]
    samples: dict[int, list] = {}
    if column_checks:
        result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_SIZE}
        if sample_columns:
            result_format["unexpected_index_column_names"] = sample_columns
        rerun = _validate(batch, suite_name, [expectations[i] for i in column_checks], result_format)
        for i, r in zip(column_checks, rerun, strict=True):
            if sample_columns:
                rows = r.result.get("partial_unexpected_index_list") or []
                samples[i] = [{c: row.get(c) for c in sample_columns} for row in rows[:SAMPLE_SIZE]]
            else:
                samples[i] = list(r.result.get("partial_unexpected_list") or [])[:SAMPLE_SIZE]
    if row_checks and sample_columns:
        # COMPLETE is the only format in which GX returns an unexpected-rows query's rows (at most 200).
        rerun = _validate(batch, suite_name, [expectations[i] for i in row_checks], {"result_format": "COMPLETE"})
        for i, r in zip(row_checks, rerun, strict=True):
            rows = (r.result.get("details") or {}).get("unexpected_rows") or []
            samples[i] = [{c: row.get(c) for c in sample_columns if c in row} for row in rows[:SAMPLE_SIZE]]
    return samples


def _outcome(r: ExpectationValidationResult, sample: list, pii: frozenset[str]) -> ExpectationOutcome:
    config = r.expectation_config
    column = _column(r)
    result = r.result or {}
    observed = result.get("observed_value")
    unexpected = result.get("unexpected_count")
    if isinstance(config and config.type, str) and config.type == "unexpected_rows_expectation":
        unexpected = observed  # GX reports the number of rows the query returned as the observed value
    mismatched = (result.get("details") or {}).get("mismatched")
    if mismatched:  # a column-set check: name the missing and unexpected columns, not every column
        observed = mismatched
    if column in pii and not isinstance(observed, (int, float, bool, type(None))):
        observed = None
    if _raised(r):
        observed = "error: " + _error_message(r)
    return ExpectationOutcome(
        expectation=(config.description if config and config.description else config.type) if config else "?",
        column=column,
        success=bool(r.success) and not _raised(r),
        unexpected_count=None if unexpected is None else int(unexpected),
        element_count=result.get("element_count"),
        sample=sample,
        observed=observed,
        type=config.type if config else "",
        arguments=_arguments(config.kwargs, column in pii) if config else {},
    )


# Arguments that say nothing about the rule (the column is reported on its own), or that are not a
# declared constant (a row query is SQL; its description says what it checks).
_NOT_ARGUMENTS = frozenset({"column", "batch_id", "result_format", "catch_exceptions", "unexpected_rows_query"})


def _arguments(kwargs: dict[str, Any], pii: bool) -> dict[str, Any]:
    """The expectation's arguments; on a PII column only numbers (bounds, `mostly`): a value set or a pattern
    written for such a column may quote a person's data."""
    return {
        k: _plain(v)
        for k, v in kwargs.items()
        if k not in _NOT_ARGUMENTS and v is not None and (not pii or isinstance(v, int | float))
    }


def _plain(value: object) -> object:
    """`value` as JSON can hold it: numbers, text, booleans and lists or mappings of them; anything else as text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def _column(r: ExpectationValidationResult) -> str | None:
    config = r.expectation_config
    return config.kwargs.get("column") if config else None


def _errors(r: ExpectationValidationResult) -> list[dict]:
    info = r.exception_info or {}
    if info.get("raised_exception"):
        return [info]
    # With metric errors GX keys exception_info by metric id.
    return [v for v in info.values() if isinstance(v, dict) and v.get("raised_exception")]


def _raised(r: ExpectationValidationResult) -> bool:
    return bool(_errors(r))


def _error_message(r: ExpectationValidationResult) -> str:
    message = str(_errors(r)[0].get("exception_message") or "error").strip()
    first_line = message.splitlines()[0] if message else "error"
    return _QUOTED.sub("'…'", first_line)[:300]
