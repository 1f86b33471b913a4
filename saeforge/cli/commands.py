"""Imports every command module so that each registers on the app."""

from saeforge.cli import (
    capture,  # noqa: F401
    eval,  # noqa: F401
    features,  # noqa: F401
    interpret,  # noqa: F401
    plan,  # noqa: F401
    run,  # noqa: F401
    serve,  # noqa: F401
    steer,  # noqa: F401
    train,  # noqa: F401
    verify,  # noqa: F401
)
