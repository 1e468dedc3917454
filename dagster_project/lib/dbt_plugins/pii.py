"""dbt-duckdb plugin that registers the `pii_token(value VARCHAR) -> VARCHAR` SQL function.

The function is `masking.pii_token` keyed by the secret in the environment variable named by the
plugin's `key_env_var` setting (profiles.yml sets `MEDALLION_PII_HMAC_KEY`). The profile names the
variable rather than rendering its value with `env_var()` because dbt exposes plugin settings as
`target.plugins` to every Jinja template and prints them in `dbt debug`; read here, the key never
enters dbt's rendered config, its logs or its artifacts. It also means `dbt parse` (and so the
manifest build) needs no secret: the key is only required when a connection is opened.

The module lives in the installed `dagster_project` package so that `module:` in profiles.yml
resolves the same way for `uv run dbt` on the command line and for the dbt subprocess Dagster starts,
without relying on the working directory or `module_paths`.
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa
from dbt.adapters.duckdb.plugins import BasePlugin
from duckdb import DuckDBPyConnection

from dagster_project.lib.masking import pii_token, validate_key

FUNCTION_NAME = "pii_token"


class Plugin(BasePlugin):
    def initialize(self, plugin_config: dict[str, Any]) -> None:
        self._key_env_var = str(plugin_config.get("key_env_var") or "")
        if not self._key_env_var:
            raise ValueError("the pii plugin needs `key_env_var` (the variable holding the HMAC key)")

    def _key(self) -> bytes:
        raw = os.environ.get(self._key_env_var, "")
        if not raw:
            raise RuntimeError(
                f"{self._key_env_var} is not set: silver models pseudonymise PII with a keyed HMAC and "
                "cannot run without the key"
            )
        try:
            return validate_key(raw.encode("utf-8"))
        except ValueError as exc:
            raise RuntimeError(f"{self._key_env_var}: {exc}") from None

    def configure_connection(self, conn: DuckDBPyConnection) -> None:
        key = self._key()

        def tokenise(values: pa.Array) -> pa.Array:
            return pa.array([pii_token(v, key) for v in values.to_pylist()], type=pa.string())

        # Vectorised (Arrow) UDF: one Python call per batch rather than per row. Deterministic and free
        # of side effects, so DuckDB may fold and cache it like a built-in.
        conn.create_function(FUNCTION_NAME, tokenise, ["VARCHAR"], "VARCHAR", type="arrow")
