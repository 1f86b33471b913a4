"""Argument, config, path and corpus errors fail before torch loads, with words that name the file and the fix,
and with one exit code across commands (saeforge.errors: 2 for what the user must change).

All cases run in ONE fresh interpreter that never imports torch (`_SCRIPT`): each case invokes the CLI in
process and records its exit code, its output and whether torch is in `sys.modules` afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, cli_env
from tests.eval.conftest import random_sae, save_as_standard, write_store

_SCRIPT = """
import json, sys
from typer.testing import CliRunner
from saeforge.cli import _register, app
_register()
results = {}
for name, args in json.loads(sys.argv[1]).items():
    r = CliRunner().invoke(app, args)
    results[name] = {"code": r.exit_code, "output": r.output, "torch": "torch" in sys.modules}
print(json.dumps(results))
"""


def _run_cases(cases: dict[str, list]) -> dict[str, dict]:
    cases = {k: [str(a) for a in v] for k, v in cases.items()}
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(cases)],
        capture_output=True,
        text=True,
        env=cli_env(COLUMNS="200"),
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model):
    """A model directory, a store of width 12, an SAE of width 16, and bad corpora and configs."""
    root = tmp_path_factory.mktemp("errors")
    store = write_store(root / "store", random_sae(12, 8).W_dec.detach().new_ones(64, 12))
    sae = save_as_standard(random_sae(16, 32), root / "sae")
    (root / "empty.txt").write_text("\n\n")
    (root / "binary.txt").write_bytes(b"fine first line\n\x00\x01\x02\xff binary\n")
    (root / "latin1.txt").write_bytes("first line\nun caf\xe9 au lait\n".encode("latin-1"))
    (root / "bad.yaml").write_text("activations: x\nhooks: ', but\n  got: ':'\n")
    (root / "typo.yaml").write_text(
        f"activations: {store}\ntokns: 128\nout: {root / 'o'}\nsaes: [{{name: a, architecture: topk}}]\n"
    )
    (root / "width.yaml").write_text(
        f"activations: {store}\ntokens: 128\nbatch_size: 64\nout: {root / 'w'}\n"
        "saes: [{name: a, architecture: topk, k: 4, d_in: 16}]\n"
    )
    model = tiny_model("gpt2")
    run = f"model: {model}\ndata: builtin\nhooks: [layers.1.resid_post]\nout: {root / 'r'}\ncapture: {{tokens: 512}}\n"
    (root / "run_typo.yaml").write_text(
        run + "train: {tokens: 256, saes: [{name: a, architecture: topk}]}\nrepotr: {}\n"
    )
    (root / "run_train_typo.yaml").write_text(
        run + "train: {tokns: 256, saes: [{name: a, architecture: topk}]}\n"
    )
    (root / "run_hub.yaml").write_text(run.replace(str(model), "org/name") + "train: {saes: [{name: a}]}\n")
    return {"root": root, "model": model, "store": store, "sae": sae}


def test_errors_come_before_torch_with_the_fix_and_exit_code_2(files):
    root, model, store, sae = files["root"], files["model"], files["store"], files["sae"]
    hook = ["--hook", "layers.1.resid_post", "--tokens", 100]
    capture = ["capture", "--model", model, *hook, "--data", "builtin"]
    results = _run_cases(
        {
            "hub id": ["capture", "--model", "org/name", *hook, "--data", "builtin", "--out", root / "c1"],
            "empty corpus": [*capture[:-1], root / "empty.txt", "--out", root / "c2"],
            "binary corpus": [*capture[:-1], root / "binary.txt", "--out", root / "c3"],
            "latin-1 corpus": [*capture[:-1], root / "latin1.txt", "--out", root / "c4"],
            "missing corpus": [*capture[:-1], root / "nothere.txt", "--out", root / "c5"],
            "bad enum": [*capture, "--dtype", "float33", "--out", root / "c6"],
            "typo key": ["train", root / "typo.yaml"],
            "bad yaml": ["train", root / "bad.yaml"],
            "missing store": ["train", "--activations", root / "no", "--architecture", "topk", "--out", root / "t"],
            "multi-token target": [
                "attribute", "--model", model, "--sae", sae, "--prompt", "The", "--target", " documentation of modules"
            ],
            "eval width": ["eval", "--sae", sae, "--activations", store, "--out", root / "e"],
            "interpret width": ["interpret", "--sae", sae, "--activations", store, "--latents", 2, "--out", root / "i"],
            "train width": ["train", root / "width.yaml"],
            "plan hub id": ["plan", "--model", "org/name", "--hook", "layers.1.resid_post", "--tokens", 100],
            "run typo key": ["run", root / "run_typo.yaml"],
            "run train typo": ["run", root / "run_train_typo.yaml"],
            "run hub id": ["run", root / "run_hub.yaml"],
        }
    )  # fmt: skip
    for name, r in results.items():
        assert r["code"] == 2 and not r["torch"], (name, r)
    out = {name: " ".join(r["output"].split()) for name, r in results.items()}
    assert "never downloads" in out["hub id"] and "never downloads" in out["plan hub id"]
    assert "empty.txt' holds no text" in out["empty corpus"]
    assert f"{root / 'binary.txt'}:2: holds NUL bytes" in out["binary corpus"]
    assert (
        f"{root / 'latin1.txt'}:2: not valid UTF-8" in out["latin-1 corpus"]
        and "iconv" in out["latin-1 corpus"]
    )
    assert "nothere.txt' does not exist" in out["missing corpus"]
    assert "'float33' is not one of float32, float16, bfloat16. Did you mean float32?" in out["bad enum"]
    assert "tokns: unknown key. Did you mean tokens?" in out["typo key"]
    assert "repotr" in out["run typo key"] and "report" in out["run typo key"], out["run typo key"]
    assert "tokns" in out["run train typo"] and "tokens" in out["run train typo"], out["run train typo"]
    assert "never downloads" in out["run hub id"]
    # The parser's own message, with line and column, not eaten by markup.
    assert (
        f"{root / 'bad.yaml'}:3:9: not valid YAML" in out["bad yaml"]
        and "expected <block end>" in out["bad yaml"]
    )
    assert "got: ':'" in results["bad yaml"]["output"]
    assert "does not exist" in out["missing store"]
    from transformers import AutoTokenizer  # the loader's tokenizer agrees with the check's tokenizer.json

    n = len(
        AutoTokenizer.from_pretrained(model).encode(" documentation of modules", add_special_tokens=False)
    )
    assert (
        n > 1
        and f"is {n} tokens" in out["multi-token target"]
        and "single token" in out["multi-token target"]
    )
    for name in ("eval width", "interpret width"):
        assert "d_in 16" in out[name] and "d_in 12" in out[name], out[name]
    assert "d_in=16" in out["train width"] and "d_in=12" in out["train width"]
    assert not any((root / d).exists() for d in ("c1", "c2", "c3", "c4", "c5", "c6", "e", "i", "t", "w", "r"))


def test_help_and_version_work_everywhere_without_torch():
    from tests.test_repo import _app, _walk

    commands = [name.split() for name, _ in _walk(_app())]
    cases = {"app -h": ["-h"], "app --version": ["--version"]}
    cases |= {f"{' '.join(c)} -h": [*c, "-h"] for c in commands}
    cases |= {f"{' '.join(c)} --version": [*c, "--version"] for c in commands}
    results = _run_cases(cases)
    for name, r in results.items():
        assert r["code"] == 0 and not r["torch"], (name, r)
        if name.endswith("--version"):
            assert r["output"].strip() == "saeforge 0.1.0", (name, r)
        else:
            assert "Usage:" in r["output"], (name, r)


def test_a_bad_byte_later_in_a_corpus_names_its_line(tmp_path):
    from saeforge.text import SourceError, read_texts

    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"text": "one"}\n{"text": "two"}\n{"text": "caf\xe9"}\n')
    docs = read_texts(path)
    assert next(docs) == "one"
    with pytest.raises(SourceError, match=r"c.jsonl:3: not valid UTF-8 \(byte 0xe9 at column 14\).*iconv"):
        list(docs)


def test_a_run_that_fails_after_validation_leaves_no_empty_folders(tmp_path, files):
    from typer.testing import CliRunner

    from saeforge.cli import _register, app

    _register()
    out = tmp_path / "new" / "deeper" / "acts"
    args = ["capture", "--model", files["model"], "--hook", "layers.9.resid_post", "--data", "builtin"]
    result = CliRunner().invoke(app, [*map(str, args), "--tokens", "100", "--out", str(out)])
    assert result.exit_code == 2 and "layer 9 does not exist" in " ".join(result.output.split())
    assert list(tmp_path.iterdir()) == []  # the folders it made (out and its missing parents) are gone


def test_the_writer_lock_removes_only_the_empty_folders_it_created(tmp_path):
    from saeforge.lock import one_writer

    (tmp_path / "kept").mkdir()
    with one_writer(tmp_path / "kept" / "a" / "b", "test"):
        (tmp_path / "kept" / "a" / "note.txt").write_text("written by the run")
    assert sorted(p.name for p in (tmp_path / "kept" / "a").iterdir()) == ["note.txt"]  # b went, a stays
    with pytest.raises(RuntimeError), one_writer(tmp_path / "x" / "y", "test"):
        raise RuntimeError("failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
