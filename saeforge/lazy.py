"""Lazy package exports: `from saeforge.train import TrainConfig` without importing torch.

A stage package's `__init__` lists its public names and the module each lives in; a name is imported on first
use (PEP 562 `__getattr__`). So `saeforge --help` and the config checks at the CLI's edge load the torch-free
config modules only. Where a public function shares its module's name (`saeforge.activations.capture`), the
package keeps the function, as an eager `from .capture import capture` would.
"""

from __future__ import annotations

import importlib
import sys
import types


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        # The import system binds a submodule onto its package after loading it; keep an export of that name.
        if isinstance(value, types.ModuleType) and name in self.__dict__.get("_EXPORTS", {}):
            return
        super().__setattr__(name, value)


def lazy_exports(package: str, exports: dict[str, str]) -> None:
    """Makes `package` (a module's `__name__`) serve `exports` (public name -> defining module) on first use."""
    module = sys.modules[package]
    module._EXPORTS = exports
    module.__all__ = sorted(exports)

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        module.__dict__[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*module.__dict__, *exports})

    module.__getattr__ = __getattr__
    module.__dir__ = __dir__
    module.__class__ = _Package
