"""The lake: one root for every layer (landing, bronze, quarantine, silver, gold), a local folder or an object store.

The root is a URI: a local path (the embedded default), `s3://bucket/prefix` (AWS or any S3-compatible store:
MinIO, Ceph, R2), `gs://bucket/prefix` or `az://container/prefix` (`abfss://` too). Credentials and endpoints
come from the standard variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`, read in `settings.py`) or, when none are
set, from the platform's workload identity; never from files in the repository. A root the platform cannot
use is refused here, with the reason, instead of becoming a local folder named `s3:`.

Three libraries reach the lake, each with the same options: deltalake (Delta tables), obstore (landing files
and manifests, written put-if-absent so landing stays immutable) and DuckDB (reads, through its delta and
httpfs extensions, which prune a scan to the partitions a query filters on).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib.resources import files
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection

# URI scheme -> the object store family it belongs to.
SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "az": "az", "abfs": "az", "abfss": "az", "azure": "az"}
_URI_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# A lake-relative path: plain segments, no `..`, no empty segment, no leading slash.
_RELATIVE = re.compile(r"^(?!/)(?!.*(?:^|/)\.\.?(?:/|$))(?!.*//)[^\x00]+$")

DUCKDB_EXTENSIONS = ("httpfs", "aws", "azure", "delta")
# Layers holding Delta tables; each becomes a DuckDB schema of the same name in `Lake.attach`.
LAYERS = ("bronze", "quarantine", "silver", "gold")
# How a write that lost to a concurrent writer of the same Delta table says so, wherever its message goes (a
# dbt model's error, as the dbt step reads it to decide whether running again can help).
LOST_COMMIT_RACE = "lost a commit race"
_TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class LakeError(ValueError):
    """The lake root (MEDALLION_LAKE_ROOT) cannot be used; the message says why and how to fix it."""


@dataclass(frozen=True)
class Lake:
    """Where the lake is (`root`) and how to reach it (`storage_options`, never printed)."""

    root: str  # an absolute local path, or `<scheme>://<bucket>[/<prefix>]` without a trailing slash
    storage_options: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, value: str, storage_options: Mapping[str, str] | None = None) -> Lake:
        """A lake from MEDALLION_LAKE_ROOT's value; `LakeError` when it names nothing the platform can use."""
        value = value.strip()
        if not value:
            raise LakeError("MEDALLION_LAKE_ROOT is empty: give a local path or an s3://, gs:// or az:// URI")
        if "://" not in value:
            if _URI_LIKE.match(value) and not re.match(r"^[A-Za-z]:[\\/]", value):
                raise LakeError(
                    f"MEDALLION_LAKE_ROOT={value!r} looks like a URI without '//': write it as "
                    "s3://bucket/prefix (or gs://, az://), or give a local path"
                )
            return cls(os.path.abspath(value))
        parts = urlsplit(value)
        scheme = parts.scheme.lower()
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise LakeError(f"MEDALLION_LAKE_ROOT={value!r}: a file:// URI must name a local path")
            return cls(os.path.abspath(parts.path))
        if scheme not in SCHEMES:
            raise LakeError(
                f"MEDALLION_LAKE_ROOT={value!r}: the scheme {scheme!r} is not supported; use a local path, "
                "s3:// (AWS, MinIO, Ceph, R2), gs:// or az:// (abfss://)"
            )
        # `abfss://container@account.dfs.core.windows.net/...` names the account after the `@`; anywhere
        # else (or with a `:`) an `@` means credentials in the URI.
        userinfo = parts.netloc.rpartition("@")[0]
        if parts.query or parts.fragment or (userinfo and (SCHEMES[scheme] != "az" or ":" in userinfo)):
            raise LakeError(
                f"MEDALLION_LAKE_ROOT: {scheme}:// URI with credentials, a query or a fragment; credentials "
                "come from the AWS_/GOOGLE_/AZURE_ variables or workload identity, never from the URI"
            )
        if not parts.netloc:
            raise LakeError(f"MEDALLION_LAKE_ROOT={value!r} names no bucket: write {scheme}://<bucket>/<prefix>")
        prefix = parts.path.strip("/")
        if prefix and not _RELATIVE.match(prefix):
            raise LakeError(f"MEDALLION_LAKE_ROOT={value!r}: the prefix must be plain path segments")
        root = f"{scheme}://{parts.netloc}" + (f"/{prefix}" if prefix else "")
        return cls(root, dict(storage_options or {}))

    @property
    def is_local(self) -> bool:
        return "://" not in self.root

    @property
    def family(self) -> str:
        """`local`, `s3`, `gs` or `az`."""
        return "local" if self.is_local else SCHEMES[self.root.split("://", 1)[0]]

    def uri(self, *parts: str) -> str:
        """The URI (or local path) of a lake-relative path."""
        relative = "/".join(p.strip("/") for p in parts if p.strip("/"))
        if relative and not _RELATIVE.match(relative):
            raise ValueError(f"not a lake-relative path: {relative!r}")
        return f"{self.root}/{relative}" if relative else self.root

    def relative(self, uri: str) -> str:
        """The lake-relative path of a URI inside the lake (what manifests record)."""
        prefix = self.root + "/"
        if not uri.startswith(prefix):
            raise ValueError(f"{uri!r} is not inside the lake {self.root!r}")
        return uri[len(prefix) :]

    def table(self, layer: str, name: str) -> str:
        """The URI of a layer's Delta table, e.g. `table("bronze", "customers")`."""
        return self.uri(layer, name)

    def delta_options(self) -> dict[str, str] | None:
        """`storage_options` for deltalake (None for a local lake)."""
        return None if self.is_local else dict(self.storage_options)

    @cached_property
    def store(self) -> Any:
        """An obstore store rooted at the lake (paths given to it are lake-relative)."""
        from obstore.store import LocalStore

        if self.is_local:
            return LocalStore(self.root, mkdir=True)
        return _obstore_store(self.root, self.family, self.storage_options)

    @property
    def duckdb_extensions(self) -> tuple[str, ...]:
        """The DuckDB extensions that read this lake: delta, and for an object store the stores' own."""
        return ("delta",) if self.is_local else DUCKDB_EXTENSIONS

    def connect(self) -> DuckDBPyConnection:
        """A new in-memory DuckDB that reads the lake: its extensions loaded (`connect_duckdb`), its credentials
        set. Every gate and every read of the lake in place opens one."""
        con = connect_duckdb(self.duckdb_extensions)
        self._set_credentials(con)
        return con

    def configure_duckdb(self, con: DuckDBPyConnection) -> None:
        """Load the extensions that read the lake's Delta tables offline, and the lake's credentials, on a
        connection opened elsewhere (dbt's)."""
        for name in self.duckdb_extensions:
            con.load_extension(duckdb_extension_path(name))
        self._set_credentials(con)

    def _set_credentials(self, con: DuckDBPyConnection) -> None:
        secret = _duckdb_secret(self)
        if secret:
            # No parameter binding in CREATE SECRET; values are quoted, and an error never shows the SQL.
            try:
                con.execute(secret)
            except Exception as exc:
                raise LakeError(f"DuckDB refused the lake credentials for {self.root}: {type(exc).__name__}") from None

    def tables(self, layer: str) -> list[str]:
        """Names of the Delta tables directly under `<lake>/<layer>/` (folders holding a `_delta_log`)."""
        import obstore

        names = []
        for prefix in obstore.list_with_delimiter(self.store, f"{layer}/")["common_prefixes"]:
            name = prefix.rstrip("/").rsplit("/", 1)[-1]
            if (
                _TABLE_NAME.match(name)
                and obstore.list_with_delimiter(self.store, f"{layer}/{name}/_delta_log/")["objects"]
            ):
                names.append(name)
        return sorted(names)

    def attach(self, con: DuckDBPyConnection, *, empty_bronze: Mapping[str, Any] | None = None) -> list[str]:
        """Views `<layer>.<table>` on `con` over every Delta table of the lake; returns their names.

        A view reads the table's latest version at each query and prunes files by partition and statistics;
        nothing is copied. `empty_bronze` maps bronze tables that may not exist yet to their Arrow schema:
        those become empty tables, so a query of a feed that never delivered reads no rows."""
        self.configure_duckdb(con)
        attached = []
        for layer in LAYERS:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {layer}")
            for table in self.tables(layer):
                scan = self.duckdb_scan(self.table(layer, table))
                con.execute(f"CREATE OR REPLACE VIEW {layer}.{table} AS SELECT * FROM {scan}")
                attached.append(f"{layer}.{table}")
        for table, schema in (empty_bronze or {}).items():
            if f"bronze.{table}" not in attached and _TABLE_NAME.match(table):
                con.register("_medallion_empty", schema.empty_table())
                con.execute(f"CREATE OR REPLACE TABLE bronze.{table} AS SELECT * FROM _medallion_empty")
                con.unregister("_medallion_empty")
        return attached

    def duckdb_scan(self, uri: str) -> str:
        """SQL reading the Delta table at `uri` (a quoted literal, never a value from a record)."""
        return f"delta_scan({_quote(uri)})"


def duckdb_extension_path(name: str) -> str:
    """Path of a DuckDB extension shipped as a `duckdb-extension-<name>` wheel for the installed DuckDB."""
    import duckdb

    path = files(f"duckdb_extension_{name}") / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not path.is_file():
        raise LakeError(
            f"the DuckDB extension {name!r} for DuckDB {duckdb.__version__} is not installed: "
            f"the wheel duckdb-extension-{name}=={duckdb.__version__} provides it (uv sync)"
        )
    return str(path)


# Extension files a signed load verified in this process (or in the process it was forked from): path ->
# their identity (`_file_identity`) as it was before that load.
_VERIFIED: dict[str, tuple[int, ...]] = {}


def _file_identity(path: str) -> tuple[int, ...]:
    """Size, inode, and the times of the last write and of the last change of any kind (which no one can set
    back: a file written in place and given its old modification time again still has a new change time)."""
    stat = os.stat(path)
    return stat.st_size, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns


def connect_duckdb(extensions: Sequence[str]) -> DuckDBPyConnection:
    """A new in-memory DuckDB with `extensions` loaded.

    DuckDB checks an extension's signature each time a database loads it, which reads the whole file: 130-160 ms
    for delta's 82 MB, paid by every gate and read of the lake. So a process verifies each file once: the first
    database to load it does so with the signature check, and later ones load the same file, unchanged since
    (`_file_identity`), allowing unsigned extensions, in under a millisecond. A file that changed in any way is
    checked again. Only the platform's own SQL runs on these databases, and the files are the ones
    the locked wheels installed."""
    import duckdb

    paths = [duckdb_extension_path(name) for name in extensions]
    identities = [_file_identity(path) for path in paths]
    verified = bool(paths) and all(_VERIFIED.get(p) == i for p, i in zip(paths, identities, strict=True))
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"} if verified else {})
    try:
        for path, identity in zip(paths, identities, strict=True):
            con.load_extension(path)
            if not verified:
                _VERIFIED[path] = identity
    except BaseException:
        con.close()
        raise
    return con


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# Standard variable -> obstore store config key (its S3/GCS/Azure config); the rest it finds itself.
_OBSTORE_KEYS = {
    "s3": {
        "AWS_ACCESS_KEY_ID": "access_key_id",
        "AWS_SECRET_ACCESS_KEY": "secret_access_key",
        "AWS_SESSION_TOKEN": "session_token",
        "AWS_REGION": "region",
        "AWS_ENDPOINT_URL": "endpoint",
        "AWS_COPY_IF_NOT_EXISTS": "copy_if_not_exists",
    },
    "gs": {"GOOGLE_APPLICATION_CREDENTIALS": "application_credentials", "GOOGLE_SERVICE_ACCOUNT": "service_account"},
    "az": {
        "AZURE_STORAGE_ACCOUNT_NAME": "account_name",
        "AZURE_STORAGE_ACCOUNT_KEY": "account_key",
        "AZURE_CLIENT_ID": "client_id",
        "AZURE_TENANT_ID": "tenant_id",
        "AZURE_FEDERATED_TOKEN_FILE": "federated_token_file",
    },
}


def _obstore_store(root: str, family: str, options: Mapping[str, str]) -> Any:
    from obstore.store import from_url

    upper = {k.upper(): v for k, v in options.items()}
    config = {key: upper[name] for name, key in _OBSTORE_KEYS[family].items() if upper.get(name)}
    if family == "s3":
        # Landing writes a file put-if-absent as a streamed upload plus a copy that fails when the target
        # exists; S3 does that copy as a multipart copy completed with If-None-Match (AWS, MinIO, moto).
        # Cloudflare R2 wants AWS_COPY_IF_NOT_EXISTS=header:cf-copy-destination-if-none-match:*.
        config.setdefault("copy_if_not_exists", "multipart")
    client = {"allow_http": True} if upper.get("AWS_ALLOW_HTTP", "").lower() == "true" else None
    return from_url(root, config=config, client_options=client)


def _duckdb_secret(lake: Lake) -> str | None:
    """A CREATE SECRET statement for the lake's store, or None for a local lake.

    With no key in the options DuckDB's credential chain is used (environment, IRSA web identity, instance
    profile), the same sources deltalake and obstore fall back to."""
    if lake.is_local:
        return None
    o = {k.upper(): v for k, v in lake.storage_options.items()}
    if lake.family == "s3":
        fields = ["TYPE s3"]
        if o.get("AWS_ACCESS_KEY_ID"):
            fields += [
                f"KEY_ID {_quote(o['AWS_ACCESS_KEY_ID'])}",
                f"SECRET {_quote(o.get('AWS_SECRET_ACCESS_KEY', ''))}",
            ]
            if o.get("AWS_SESSION_TOKEN"):
                fields.append(f"SESSION_TOKEN {_quote(o['AWS_SESSION_TOKEN'])}")
        else:
            fields.append("PROVIDER credential_chain")
        if o.get("AWS_REGION"):
            fields.append(f"REGION {_quote(o['AWS_REGION'])}")
        if o.get("AWS_ENDPOINT_URL"):
            endpoint = urlsplit(o["AWS_ENDPOINT_URL"])
            fields += [
                f"ENDPOINT {_quote(endpoint.netloc)}",
                "URL_STYLE 'path'",
                f"USE_SSL {'false' if endpoint.scheme == 'http' else 'true'}",
            ]
        scope = lake.root.split("/", 3)[:3]
        fields.append(f"SCOPE {_quote('/'.join(scope))}")
        return f"CREATE OR REPLACE SECRET medallion_lake ({', '.join(fields)})"
    if lake.family == "gs":
        if o.get("GOOGLE_HMAC_KEY_ID"):
            return (
                "CREATE OR REPLACE SECRET medallion_lake (TYPE gcs, "
                f"KEY_ID {_quote(o['GOOGLE_HMAC_KEY_ID'])}, SECRET {_quote(o.get('GOOGLE_HMAC_SECRET', ''))})"
            )
        return None
    account = o.get("AZURE_STORAGE_ACCOUNT_NAME", "")
    if o.get("AZURE_STORAGE_ACCOUNT_KEY"):
        connection = f"AccountName={account};AccountKey={o['AZURE_STORAGE_ACCOUNT_KEY']}"
        return f"CREATE OR REPLACE SECRET medallion_lake (TYPE azure, CONNECTION_STRING {_quote(connection)})"
    return (
        "CREATE OR REPLACE SECRET medallion_lake (TYPE azure, PROVIDER credential_chain, "
        f"ACCOUNT_NAME {_quote(account)})"
    )
