"""The fault-injection tests reuse the evaluation tests' store and SAE writers."""

from tests.eval.conftest import acts, saes, store_tools  # noqa: F401
