"""saeforge.serve: an OpenAI-compatible server with feature steering, feature read-out and an audit log.

backend (the generation interface and its HF implementation) -> batcher (dynamic batching on one worker
thread) -> app (FastAPI routes behind `guard`: auth, limits, one audit record per request) -> server (settings,
loading, uvicorn). `audit` writes and verifies the hash-chained log.
"""

from saeforge.serve.audit import AuditLog, read_records, verify_log
from saeforge.serve.server import ServeConfig, build_state, serve

__all__ = ["AuditLog", "ServeConfig", "build_state", "read_records", "serve", "verify_log"]
