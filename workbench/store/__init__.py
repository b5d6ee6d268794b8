"""The activation and result store (DuckDB): see ``workbench.store.duckdb_store``."""

from workbench.store.duckdb_store import SCHEMA_VERSION, ActivationKey, ResultKey, Skipped, Store

__all__ = ["SCHEMA_VERSION", "ActivationKey", "ResultKey", "Skipped", "Store"]
