"""The built-in English corpus: the Python standard library's own documentation.

Two sources, both shipped with every CPython install, so the corpus needs no download:

- `pydoc_data.topics.topics`: the language reference and library topics that `help()` shows, cut into
  documents of whole paragraphs (about `_CHUNK_CHARS` characters each);
- the docstrings of the modules, classes and functions of a fixed list of standard-library modules
  (`MODULES`), read from their source files with `ast` (nothing is imported, so no module side effects);
- the docstrings of the built-in (C) modules in `C_MODULES`: their own functions, classes and methods
  (`str.split`, `math.gcd`, `os.stat` via `posix`, ...), which have no source file.

Cleaning is light: heading rules (`****`) go, runs of whitespace collapse to one space and documents shorter than `MIN_CHARS`
characters are dropped; exact duplicates are kept once. Each document falls into the held-out part when the
first byte of the sha256 of its text is below `_HELDOUT_BYTE` (about 10%), into the train part otherwise, so
the split is deterministic and disjoint. The text itself follows the running Python version's documentation.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import inspect
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

MIN_CHARS = 80
_CHUNK_CHARS = 1500
_HELDOUT_BYTE = 26  # 26/256 ~ 10% of documents are held out

SPLITS = ("train", "heldout")

MODULES = (
    "abc argparse ast asyncio base64 bdb bisect bz2 calendar cmd code codecs codeop collections colorsys "
    "compileall concurrent configparser contextlib contextvars copy copyreg csv ctypes curses dataclasses "
    "datetime dbm decimal difflib dis doctest email enum filecmp fileinput fnmatch fractions ftplib functools "
    "genericpath getopt getpass gettext glob graphlib gzip hashlib heapq hmac html http imaplib importlib "
    "inspect io ipaddress json keyword linecache locale logging lzma mailbox mimetypes modulefinder "
    "multiprocessing netrc ntpath numbers opcode operator optparse os pathlib pdb pickle pickletools pkgutil "
    "platform plistlib poplib posixpath pprint profile pstats pty py_compile pyclbr pydoc queue quopri random "
    "re reprlib rlcompleter runpy sched secrets selectors shelve shlex shutil signal site smtplib socket "
    "socketserver sqlite3 ssl stat statistics string stringprep struct subprocess symtable sysconfig tabnanny "
    "tarfile tempfile textwrap threading timeit token tokenize tomllib trace traceback tracemalloc tty types "
    "typing unittest urllib uuid warnings wave weakref webbrowser wsgiref xml xmlrpc zipapp zipfile zipimport "
    "zoneinfo"
).split()

C_MODULES = (
    "builtins math cmath itertools time gc array binascii zlib unicodedata select mmap posix nt "
    "_io _collections _functools _operator _socket _struct _json _pickle _csv _random _sqlite3"
).split()

_WS = re.compile(r"\s+")
_RULE = re.compile(r"([*=~^-])\1{3,}")


def clean(text: str) -> str:
    """Drops reStructuredText rule lines (`*****`), collapses every run of whitespace to one space."""
    return _WS.sub(" ", _RULE.sub(" ", text)).strip()


def _topic_documents() -> Iterator[str]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        chunk: list[str] = []
        size = 0
        for paragraph in re.split(r"\n\s*\n", topics[key]):
            chunk.append(paragraph)
            size += len(paragraph)
            if size >= _CHUNK_CHARS:
                yield "\n\n".join(chunk)
                chunk, size = [], 0
        if chunk:
            yield "\n\n".join(chunk)


def _module_files(stdlib: Path, name: str) -> list[Path]:
    single = stdlib / f"{name}.py"
    if single.is_file():
        return [single]
    package = stdlib / name
    if not (package / "__init__.py").is_file():
        return []
    return sorted(
        p
        for p in package.rglob("*.py")
        if not {"test", "tests", "idle_test"} & set(p.relative_to(package).parts)
    )


def _docstring_documents() -> Iterator[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in MODULES:
        for path in _module_files(stdlib, name):
            try:
                tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
            except SyntaxError:
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        yield doc


def _c_documents() -> Iterator[str]:
    for name in C_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        objects = [module]
        for key, value in sorted(vars(module).items()):
            # Only the module's own C objects: tools replace some at run time (pytest: sys.unraisablehook).
            if key.startswith("_") or getattr(value, "__module__", None) != name:
                continue
            if inspect.isbuiltin(value):
                objects.append(value)
            elif inspect.isclass(value):
                objects.append(value)
                objects += [
                    v
                    for k, v in sorted(vars(value).items())
                    if not k.startswith("_") and inspect.isroutine(v)
                ]
        for obj in objects:
            doc = obj.__doc__
            if isinstance(doc, str):
                yield doc


@functools.lru_cache(maxsize=1)
def _documents() -> tuple[tuple[str, ...], tuple[str, ...]]:
    seen: set[str] = set()
    parts: dict[str, list[str]] = {"train": [], "heldout": []}
    for raw in (*_topic_documents(), *_docstring_documents(), *_c_documents()):
        text = clean(raw)
        if len(text) < MIN_CHARS or text in seen:
            continue
        seen.add(text)
        heldout = hashlib.sha256(text.encode("utf-8")).digest()[0] < _HELDOUT_BYTE
        parts["heldout" if heldout else "train"].append(text)
    return tuple(parts["train"]), tuple(parts["heldout"])


def builtin_documents(split: str | None = None) -> tuple[str, ...]:
    """The built-in corpus's documents: `split` None (all: train then held-out), "train" or "heldout"."""
    train, heldout = _documents()
    if split is None:
        return train + heldout
    if split == "train":
        return train
    if split == "heldout":
        return heldout
    raise ValueError(f"unknown split {split!r} of the built-in corpus; use one of {', '.join(SPLITS)}")
