"""saeforge.serve: an OpenAI-compatible server with feature steering, feature read-out and an audit log.

backend (the generation interface and its HF implementation) -> batcher (dynamic batching on one worker
thread) -> app (FastAPI routes behind `guard`: auth, limits, one audit record per request) -> server (loading
everything a `config.ServeConfig` names, uvicorn). `audit` writes and verifies the hash-chained log;
`summary` aggregates it for `saeforge audit report`.
"""
