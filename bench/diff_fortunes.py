"""A real model diff on CPU in a few minutes: a tiny GPT-2 trained on Python's documentation, fine-tuned on
Debian's fortune cookies, diffed with `saeforge diff` (docs/diffing.md shows the results).

    apt-get install -y fortunes        # /usr/share/games/fortunes
    python bench/diff_fortunes.py --out /tmp/diff-fortunes --k 8 --expansion-factor 2 --train-steps 1000
    python bench/diff_fortunes.py --out /tmp/diff-narrow --narrow --ft-lr 1e-3 --k 8 --expansion-factor 2 \
        --train-steps 1000      # a narrow fine-tune: block 0's MLP only
    python bench/diff_fortunes.py --out /tmp/diff-mlp1 --base-steps 1500 --ft-data fortunes --narrow 1 \
        --ft-steps 1500 --ft-lr 1e-3 --hook layers.1.resid_post --hook layers.1.mlp_out --k 8 \
        --expansion-factor 4 --train-steps 800    # block 1's MLP only, diffed at its output: fine-tune-only latents

Stages (each skipped when its output exists, so a rerun only redoes what is missing):
1. corpora: builtin:train (Python docs) and OUT/fortunes.jsonl (one fortune per line), a BPE tokenizer (2048
   tokens) trained on both;
2. models: OUT/base (GPT-2, d_model 128, 2 layers) trained on the docs, OUT/finetuned = base further trained on
   a mix of the fortunes and the docs, or (--ft-data fortunes) the fortunes only (all weights, or with
   --narrow BLOCK that block's MLP only);
3. capture: both models over the same 50/50 mix of the two corpora, same settings, at each --hook
   -> OUT/capture-{base,finetuned};
4. diff per hook: `saeforge diff`'s Python API (crosscoder, table, report, causal check on the fortunes) -> OUT/diff
   (the default hook) or OUT/diff-HOOK;
5. check: the share of fortune-distinctive tokens among the top contexts of the fine-tune-only, base-only and
   highest-relative-norm latents, against the most frequent shared (else changed) latents
   (OUT/diff*/check.json, printed).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections import Counter
from itertools import islice
from pathlib import Path

import torch

FORTUNES = Path("/usr/share/games/fortunes")
HOOK = "layers.1.resid_pre"
CONTEXT = 64


def fortunes(out: Path) -> Path:
    path = out / "fortunes.jsonl"
    if path.exists():
        return path
    if not FORTUNES.is_dir():
        raise SystemExit(f"{FORTUNES} is missing: apt-get install -y fortunes")
    docs = []
    for f in sorted(FORTUNES.iterdir()):
        if f.suffix or not f.is_file():
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        docs += [d.strip() for d in text.split("\n%\n") if len(d.strip()) > 40]
    random.Random(0).shuffle(docs)
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def _mix(out: Path, fortune_path: Path) -> Path:
    """OUT/mix.jsonl: fortunes and Python docs alternating, 3000 of each."""
    from saeforge.text import read_texts

    path = out / "mix.jsonl"
    docs = list(islice(read_texts("builtin:train"), 3000))
    fort = list(islice(read_texts(fortune_path), 3000))
    path.write_text(
        "".join(json.dumps({"text": t}) + "\n" for pair in zip(fort, docs, strict=False) for t in pair)
    )
    return path


def tokenizer(out: Path, fortune_path: Path) -> Path:
    tok_dir = out / "tokenizer"
    if tok_dir.exists():
        return tok_dir
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from saeforge.text import read_texts

    specials = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=list(specials.values()), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    texts = list(islice(read_texts("builtin:train"), 3000)) + list(islice(read_texts(fortune_path), 3000))
    tok.train_from_iterator(texts, trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **specials).save_pretrained(tok_dir)
    return tok_dir


def _batches(source: str, tok, batch: int, seed: int):
    from saeforge.text import pack, read_texts

    rows = list(islice(pack(read_texts(source), tok, CONTEXT), 20000))
    g = torch.Generator().manual_seed(seed)
    while True:
        for i in torch.randperm(len(rows), generator=g).split(batch):
            if len(i) == batch:
                yield torch.stack([rows[j] for j in i.tolist()]).long()


def train_lm(model, tok, source: str, steps: int, lr: float, seed: int, params=None) -> float:
    opt = torch.optim.AdamW(list(params or model.parameters()), lr=lr, weight_decay=0.01)
    model.train()
    data = _batches(source, tok, 8, seed)
    loss = math.nan
    for _ in range(steps):
        x = next(data)
        out = model(input_ids=x, labels=x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        loss = out.loss.item()
    model.eval()
    return loss


def models(
    out: Path,
    tok_dir: Path,
    fortune_path: Path,
    base_steps: int,
    ft_steps: int,
    ft_lr: float,
    narrow: int | None,
    ft_data: str = "mix",
) -> tuple[Path, Path]:
    base_dir, ft_dir = out / "base", out / "finetuned"
    if ft_dir.exists():
        return base_dir, ft_dir
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=128, n_layer=2, n_head=4, n_inner=512, n_positions=128,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    if (base_dir / "config.json").exists():
        model = GPT2LMHeadModel.from_pretrained(base_dir)
    else:
        model = GPT2LMHeadModel(cfg)
        t = time.time()
        loss = train_lm(model, tok, "builtin:train", base_steps, 1e-3, 0)
        print(f"base: final loss {loss:.3f} ({time.time() - t:.0f}s)")
        model.save_pretrained(base_dir)
        tok.save_pretrained(base_dir)
    t = time.time()
    # "mix": the docs come back in (as fine-tunes that keep the base model's skills do); "fortunes": the new
    # corpus only.
    mix = _mix(out, fortune_path) if ft_data == "mix" else fortune_path
    params = model.transformer.h[narrow].mlp.parameters() if narrow is not None else None
    print(f"fine-tune: final loss {train_lm(model, tok, str(mix), ft_steps, ft_lr, 1, params):.3f} "
          f"({time.time() - t:.0f}s)")  # fmt: skip
    model.save_pretrained(ft_dir)
    tok.save_pretrained(ft_dir)
    return base_dir, ft_dir


def capture_pair(
    out: Path, base_dir: Path, ft_dir: Path, fortune_path: Path, tokens: int, hooks: list[str]
) -> list[tuple[Path, Path]]:
    """Per hook, the (base, fine-tuned) stores of both models over the same 50/50 mix of the corpora."""
    from saeforge.activations import CaptureConfig, capture

    stores = []
    for name, model in (("base", base_dir), ("finetuned", ft_dir)):
        cfg = CaptureConfig(model=str(model), hooks=hooks, tokens=tokens, out=out / f"capture-{name}",
                            context_size=CONTEXT, data=[{"source": "builtin:train"}, {"source": str(fortune_path)}])  # fmt: skip
        stores.append(capture(cfg))
    return [(stores[0][h], stores[1][h]) for h in hooks]


def distinctive_tokens(tok_dir: Path, fortune_path: Path, ratio: float = 5.0) -> set[int]:
    """Token ids at least `ratio` times more frequent (per token) in the fortunes than in the Python docs."""
    from transformers import AutoTokenizer

    from saeforge.text import read_texts

    tok = AutoTokenizer.from_pretrained(tok_dir)
    counts = {}
    for name, src in (("docs", "builtin:train"), ("fortunes", str(fortune_path))):
        c = Counter()
        for text in islice(read_texts(src), 3000):
            c.update(tok(text)["input_ids"])
        counts[name] = c
    n_docs, n_fort = sum(counts["docs"].values()), sum(counts["fortunes"].values())
    return {t for t, n in counts["fortunes"].items()
            if (n / n_fort) >= ratio * ((counts["docs"][t] + 1) / n_docs) and n >= 5}  # fmt: skip


def check(diff_dir: Path, base_store: Path, ft_store: Path, tok_dir: Path, fortune_path: Path) -> dict:
    """Per group of latents, the share of top-context centre tokens that are fortune-distinctive: the shown
    fine-tune-only and base-only latents, every fine-tune-only latent, the 10 live latents of highest relative
    norm whatever their category, and as control the 10 most frequent shared (else changed) latents."""
    from transformers import AutoTokenizer

    from saeforge.activations import ActivationStore
    from saeforge.diff.contexts import side_by_side
    from saeforge.diff.data import PairedBatches
    from saeforge.interpret.contexts import tokenizer_decode
    from saeforge.sae import load_sae

    tok = AutoTokenizer.from_pretrained(tok_dir)
    special_str = {tok.decode([t]) for t in distinctive_tokens(tok_dir, fortune_path)}
    doc = json.loads((diff_dir / "diff.json").read_text())
    live = [r for r in doc["latents"] if r["category"] != "dead"]
    # The control: the most frequent shared latents, or the most frequent changed ones where none is shared.
    control = "shared" if any(r["category"] == "shared" for r in live) else "changed"
    shared = sorted((r for r in live if r["category"] == control), key=lambda r: -r["freq"])
    groups = {
        **doc["shown"],
        "finetuned_only_all": [r["latent"] for r in live if r["category"] == "finetuned_only"],
        "highest_relative_norm": [r["latent"] for r in sorted(live, key=lambda r: -r["relative_norm"])[:10]],
        f"{control}_control": [r["latent"] for r in shared[:10]],
    }
    base, ft = ActivationStore.open(base_store), ActivationStore.open(ft_store)
    coder = load_sae(diff_dir / "crosscoder" / "crosscoder")
    ids = sorted({j for g in groups.values() for j in g})
    _, contexts = side_by_side(coder, PairedBatches(base, ft), ids, 8, tokens_of=base.context,
                               decode=tokenizer_decode(tok))  # fmt: skip
    by_id = dict(zip(ids, contexts, strict=True))
    rows = {r["latent"]: r for r in doc["latents"]}
    result = {"distinctive_tokens": len(special_str), "groups": {}, "latents": []}
    for name, members in groups.items():
        hits = total = 0
        for j in members:
            centres = [c["tokens"][c["center"]] for c in by_id[j]]
            h = sum(t in special_str for t in centres)
            hits, total = hits + h, total + len(centres)
            r = rows[j]
            result["latents"].append({"group": name, "latent": j, "category": r["category"],
                                      "relative_norm": r["relative_norm"], "nu_eps": r["nu_eps"], "nu_r": r["nu_r"],
                                      "distinctive_share": h / max(len(centres), 1), "top_tokens": centres})  # fmt: skip
        result["groups"][name] = {
            "latents": len(members),
            "distinctive_share": hits / total if total else None,
        }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--base-steps", type=int, default=400)
    ap.add_argument("--ft-steps", type=int, default=300)
    ap.add_argument("--tokens", type=int, default=60_000)
    ap.add_argument("--ft-lr", type=float, default=3e-4)
    ap.add_argument("--ft-data", choices=("mix", "fortunes"), default="mix", help="the fine-tune's corpus")
    ap.add_argument("--narrow", type=int, nargs="?", const=0, default=None, metavar="BLOCK",
                    help="fine-tune one block's MLP only (block 0 when no BLOCK is given)")  # fmt: skip
    ap.add_argument("--hook", action="append", help=f"hook(s) to capture and diff (default {HOOK})")
    ap.add_argument("--train-steps", type=int, default=600, help="crosscoder steps of 512 rows")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--expansion-factor", type=float, default=4)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # tiny matmuls: threads only contend on a shared machine
    fortune_path = fortunes(args.out)
    tok_dir = tokenizer(args.out, fortune_path)
    base_dir, ft_dir = models(args.out, tok_dir, fortune_path, args.base_steps, args.ft_steps, args.ft_lr,
                              args.narrow, args.ft_data)  # fmt: skip
    hooks = args.hook or [HOOK]
    t = time.time()
    pairs = capture_pair(args.out, base_dir, ft_dir, fortune_path, args.tokens, hooks)
    print(f"captured {args.tokens} tokens per model ({time.time() - t:.0f}s)")
    for hook, (base_store, ft_store) in zip(hooks, pairs, strict=True):
        diff_one(args, hook, base_store, ft_store, base_dir, ft_dir, tok_dir, fortune_path)


def diff_one(args, hook, base_store, ft_store, base_dir, ft_dir, tok_dir, fortune_path) -> None:
    from saeforge.diff.config import DiffConfig
    from saeforge.diff.outputs import write_diff_outputs
    from saeforge.diff.run import run_diff

    t = time.time()
    out = args.out / ("diff" if hook == HOOK else f"diff-{hook}")
    cfg = DiffConfig(base_activations=base_store, finetuned_activations=ft_store, out=out, k=args.k,
                     train_batch_size=512, tokens=args.train_steps * 512,
                     expansion_factor=args.expansion_factor, base_model=base_dir, finetuned_model=ft_dir,
                     data=str(fortune_path), causal_contexts=32, context_size=CONTEXT)  # fmt: skip
    result = run_diff(cfg, progress=print)
    write_diff_outputs(result, cfg.out)
    print(f"{hook}: diff ({time.time() - t:.0f}s): {result.counts}")
    c = result.causal
    if "skipped" in c:
        print("causal check skipped:", c["skipped"])
    else:
        print(
            f"causal: fraction closed {c['fraction_closed']:.3f}, control {c['control']['fraction_closed_mean']:.3f}"
        )
    summary = check(cfg.out, base_store, ft_store, tok_dir, fortune_path)
    (out / "check.json").write_text(json.dumps(summary, indent=1))
    print(hook, json.dumps(summary["groups"]), f"({summary['distinctive_tokens']} distinctive tokens)")


if __name__ == "__main__":
    main()
