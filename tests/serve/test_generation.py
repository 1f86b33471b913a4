"""The HF backend's batched decode loop: equal to `saeforge steer` (model.generate under the steering hooks),
per-row steering that never leaks across rows of a batch, stop strings and seeded sampling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from saeforge.models import load_model, record
from saeforge.serve.hf_generate import generate_batch
from saeforge.serve.rows import Row, Sampling
from saeforge.serve.saes import Clamp, Edits, ServedSAE, Steer
from saeforge.serve.text_stream import TextStream
from saeforge.steer import clamping, generate, steering
from tests.serve.conftest import HOOK, make_sae

PROMPT = "The documentation of the module"
SHORT = "Hi"


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def setup(request, tiny_model, tmp_path_factory):
    from saeforge.sae import load_sae

    loaded = load_model(tiny_model(request.param))
    sae = load_sae(make_sae(tmp_path_factory.mktemp("sae") / "s"))
    return loaded, sae, {"s": ServedSAE("s", sae, HOOK, "-", Path("."))}


def run(loaded, saes, specs, max_tokens=10):
    """specs: [(prompt, Edits)] -> [Finished], all in one batch."""
    out = {}
    rows = [
        Row(
            loaded.tokenizer(p)["input_ids"],
            Sampling(max_tokens, temperature=0),
            e,
            on_finish=lambda f, i=i: out.__setitem__(i, f),
        )
        for i, (p, e) in enumerate(specs)
    ]
    generate_batch(loaded, saes, rows)
    return [out[i] for i in range(len(rows))]


def steered(loaded, sae, prompt, coefficient, max_tokens=10):
    with steering(loaded, HOOK, sae.W_dec.detach()[3], coefficient):
        return generate(loaded, prompt, max_tokens)[0]


def test_plain_steered_and_zero_equal_saeforge_steer(setup):
    loaded, sae, saes = setup
    plain = generate(loaded, PROMPT, 10)[0]
    ref = steered(loaded, sae, PROMPT, 200.0)
    assert ref != plain  # the steering is strong enough to matter
    got = run(loaded, saes, [(PROMPT, Edits())])[0]
    assert got.token_ids == plain and got.prompt_tokens == len(loaded.tokenizer(PROMPT)["input_ids"])
    assert run(loaded, saes, [(PROMPT, Edits(steer=(Steer("s", 3, 200.0),)))])[0].token_ids == ref
    assert run(loaded, saes, [(PROMPT, Edits(steer=(Steer("s", 3, 0.0),)))])[0].token_ids == plain


def test_clamp_equals_saeforge_steer_clamp(setup):
    loaded, sae, saes = setup
    with clamping(loaded, HOOK, sae, 7, 40.0):
        ref = generate(loaded, PROMPT, 10)[0]
    assert run(loaded, saes, [(PROMPT, Edits(clamp=(Clamp("s", 7, 40.0),)))])[0].token_ids == ref


def test_rows_of_one_batch_never_leak(setup):
    """Same prompt, different steering, one batch; and padded rows of another length beside them."""
    loaded, sae, saes = setup
    plain, plain_short = generate(loaded, PROMPT, 10)[0], generate(loaded, SHORT, 10)[0]
    up, down = steered(loaded, sae, PROMPT, 200.0), steered(loaded, sae, PROMPT, -200.0)
    up_short = steered(loaded, sae, SHORT, 200.0)
    assert len({tuple(plain), tuple(up), tuple(down)}) == 3
    e_up, e_down = Edits(steer=(Steer("s", 3, 200.0),)), Edits(steer=(Steer("s", 3, -200.0),))
    got = run(
        loaded, saes, [(PROMPT, e_up), (PROMPT, Edits()), (PROMPT, e_down), (SHORT, e_up), (SHORT, Edits())]
    )
    assert [g.token_ids for g in got] == [up, plain, down, up_short, plain_short]


def test_features_read_after_steering_and_per_token(setup):
    loaded, sae, saes = setup
    out = {}
    ids = loaded.tokenizer(PROMPT)["input_ids"]
    rows = [
        Row(
            ids,
            Sampling(6, temperature=0),
            Edits(steer=(Steer("s", 3, 200.0),)),
            features_top=4,
            per_token=True,
            on_finish=lambda f: out.__setitem__("a", f),
        ),
        Row(
            ids,
            Sampling(6, temperature=0),
            Edits(),
            features_top=4,
            on_finish=lambda f: out.__setitem__("b", f),
        ),
    ]
    generate_batch(loaded, saes, rows)
    a, b = out["a"].features[0], out["b"].features[0]
    assert a.top[0][0] == 3 and a.top[0][1] > 10 * max((mx for _, mx, _ in b.top), default=0.01)
    assert len(a.per_token) == 6 and b.per_token == []
    # Reference: one steered forward over prompt + completion[:-1], the hook recorded, encoded in float64.
    seq = torch.tensor([ids + out["a"].token_ids[:-1]])
    with (
        torch.no_grad(),
        record(loaded, [HOOK]) as acts,
        steering(loaded, HOOK, sae.W_dec.detach()[3], 200.0),
    ):
        loaded.model(input_ids=seq)
    z = sae.double().encode(acts[HOOK][0].double())  # [T, d_sae]
    sae.float()
    for latent, mx, mean in a.top:
        assert mx == pytest.approx(float(z[:, latent].max()), rel=1e-4)
        assert mean == pytest.approx(float(z[:, latent].mean()), rel=1e-4)
    first = z[len(ids) - 1].topk(4)  # the position whose logits chose completion token 0
    assert [i for i, _ in a.per_token[0]] == [int(i) for v, i in zip(*first, strict=True) if v > 0]


def test_stop_strings_and_seeded_sampling(setup):
    loaded, _, saes = setup
    ids = loaded.tokenizer(PROMPT)["input_ids"]

    def sample(seed, stop=()):
        out = {}
        row = Row(
            ids,
            Sampling(12, temperature=1.0, top_p=0.9, seed=seed, stop=stop),
            on_finish=lambda f: out.__setitem__(0, f),
        )
        generate_batch(loaded, saes, [row])
        return out[0]

    a, b = sample(1), sample(1)
    assert a.token_ids == b.token_ids and a.text == b.text
    stop = a.text[3:5]
    c = sample(1, (stop,))
    assert c.finish_reason == "stop" and c.text == a.text[: a.text.find(stop)]


class _CharTok:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def test_text_stream_holds_back_possible_stop_prefix():
    s = TextStream(_CharTok(), ("END",))
    shown = "".join(s.push(ord(c)) for c in "abcEN")
    assert shown == "abc"  # "EN" may begin "END"
    shown += s.push(ord("x"))
    assert shown == "abcENx" and not s.stopped
    for c in "yEND":
        shown += s.push(ord(c))
    assert s.stopped and shown + s.flush() == "abcENxy" and s.text == "abcENxy"
