"""Avro contracts (``*.avsc`` beside this file) and their single-object codec."""

from tiertwin.schemas.codec import MAGIC, SCHEMA_DIR, Schema, SchemaRegistry, full_name, schema_fingerprint

__all__ = ["MAGIC", "SCHEMA_DIR", "Schema", "SchemaRegistry", "full_name", "schema_fingerprint"]
