"""report.html and the latent dashboard as a reader sees them, checked on the parsed HTML (and, where headless
Chromium is installed, the layout at 800 px): contexts read as text, one name and rounding per metric, no
figure without information or twice, labelled activations, the judge's command, what to look at next."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from saeforge.eval.verdict import verdict
from saeforge.interpret.contexts import tokenizer_decode
from saeforge.report.evaluation import SIDEWAYS_MAX_SAES, comparison_table_html, evaluation_section_html
from saeforge.report.html import ContextExample, LatentContexts, SAEReport, render_report

VOID = {"img", "meta", "br", "input", "wbr", "hr", "link"}
TEXT = "the garbage collector (gc) frees memory, doesn't it?"


class Node:
    def __init__(self, tag: str, attrs: dict, parent: Node | None):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    @property
    def classes(self) -> list[str]:
        return (self.attrs.get("class") or "").split()

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        found = []
        for c in self.children:
            if isinstance(c, Node):
                if (tag is None or c.tag == tag) and (cls is None or cls in c.classes):
                    found.append(c)
                found += c.all(tag, cls)
        return found

    def by_id(self, id_: str) -> Node:
        return next(n for n in self.all() if n.attrs.get("id") == id_)


class Tree(HTMLParser):
    def __init__(self, html: str):
        super().__init__()
        self.root = self.node = Node("#root", {}, None)
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.node)
        self.node.children.append(node)
        if tag not in VOID:
            self.node = node

    def handle_endtag(self, tag):
        n = self.node
        while n.parent is not None and n.tag != tag:
            n = n.parent
        if n.parent is not None:
            self.node = n.parent

    def handle_data(self, data):
        self.node.children.append(data)


@pytest.fixture(scope="module")
def wordpiece(tiny_wordpiece_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_wordpiece_dir), local_files_only=True)


def test_wordpiece_contexts_read_as_the_text(wordpiece):
    ids = wordpiece(TEXT)["input_ids"]  # [CLS] ... [SEP]
    assert any(t.startswith("##") for t in wordpiece.convert_ids_to_tokens(ids)), "test text must split"
    pieces = tokenizer_decode(wordpiece)(ids)
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert "".join(pieces[1:-1]).strip() == TEXT  # pieces merged, punctuation attached as written


def ex_token(wordpiece, i: int) -> str:
    return tokenizer_decode(wordpiece)(wordpiece(TEXT)["input_ids"])[i].strip()


def _report(wordpiece, tmp_path, n_saes: int = 1):
    history = [
        {
            "tokens": 1024 * (i + 1),
            "loss": 2.0 / (i + 1),
            "fvu": 0.9 / (i + 1),
            "l0": 32.0,
            "dead_fraction": 0.0,
        }
        for i in range(6)
    ]
    ids = wordpiece(TEXT)["input_ids"]
    tokens = tokenizer_decode(wordpiece)(ids)
    acts = [0.0] * len(tokens)
    acts[3] = 2.5
    example = ContextExample(tokens=tokens, acts=acts, max_act=2.5)
    reports, results = [], []
    for i in range(n_saes):
        m = {
            "name": f"topk{i}", "d_in": 64, "d_sae": 1024, "l0": 32.0, "fvu": 0.486631, "explained_variance": 0.513369,
            "pooled_cosine": 0.933912, "pooled_cosine_score": 0.838471, "dead_fraction": 0.0,
            "dense_fraction_10": 0.00048828, "duplication": 0.0,
        }  # fmt: skip
        m["verdict"], m["verdict_evidence"] = verdict(m)
        density = np.r_[np.zeros(8), np.logspace(-4, -1, 1016)]
        results.append({**m, "latent_density": density, "dead_density_floor": 1e-5})
        reports.append(
            SAEReport(
                name=m["name"], hook="layers.3.resid_post", sae_dir=str(tmp_path / m["name"]), metrics=m,
                history=history, density=density, activations=str(tmp_path / "heldout"),
                latents=[LatentContexts(latent=7, density=0.0123, examples=[example])],
            )
        )  # fmt: skip
    return render_report(
        reports, facts={"model": "m"}, extra_sections=[evaluation_section_html(results)]
    ), reports


def test_report_has_what_a_reader_needs(wordpiece, tmp_path):
    html, (rep,) = _report(wordpiece, tmp_path)
    page = Tree(html).root
    text = page.text()
    # No figure without information, none twice: loss and FVU curves and one density histogram; the flat L0
    # and the all-zero dead fraction are numbers.
    alts = [img.attrs.get("alt", "") for img in page.all("img")]
    assert sorted(alts) == ["latent density histogram of topk0", "training curve", "training curve"]
    assert "L0 (active latents per token): 32 at every logged step" in text
    assert "dead fraction (of latents): 0 at every logged step" in text

    # One name and one rounding per metric: the table's cell is the number the verdict quotes.
    table = page.all("table", "comparison")[0]
    cells = {tr.all("th")[0].text(): tr.all("td")[0].text() for tr in table.all("tr") if tr.all("td")}
    assert cells["pooled-cosine score"] == "0.8385" and cells["FVU"] == "0.4866"
    nxt = page.by_id("next")
    for name in ("pooled-cosine score", "FVU"):
        assert f"{name} {cells[name]}" in nxt.text()
        assert f"{name} {cells[name]}" in rep.metrics["verdict_evidence"]
    assert "pooled_cosine_score" not in text and "0.838 " not in text and "0.932" not in text

    # What to look at next: the verdict's reasons, links that land, the dashboard command.
    hrefs = [a.attrs["href"] for a in nxt.all("a")]
    assert "#evaluation" in hrefs and "#latents" in hrefs
    assert page.by_id("evaluation").all("table") and page.by_id("latents").all("div", "latent")
    assert "reconstruction poor" in nxt.text() and "noisy" in nxt.text()
    assert f"saeforge interpret --sae {rep.sae_dir} --activations {rep.activations}" in nxt.text()
    # Explanations absent: the exact command that gets them.
    assert "--judge-url http://HOST:PORT/v1 --judge-model MODEL" in page.by_id("latents").text()

    # Contexts as the text the model read, special tokens as quiet markers, every activation labelled.
    (ctx,) = [c for c in page.all("div", "ctx") if "head" not in c.classes]
    txt = ctx.all("span", "txt")[0]
    assert [m.text() for m in txt.all("span", "sp")] == ["[CLS]", "[SEP]"]
    plain = "".join(
        c if isinstance(c, str) else c.text() for c in txt.children if "sp" not in getattr(c, "classes", [])
    )
    assert plain == TEXT and "##" not in text
    shaded = [s for s in txt.all("span") if "background" in s.attrs.get("style", "")]
    assert (
        len(shaded) == 1
        and shaded[0].attrs["title"] == "activation 2.5"
        and shaded[0].text() == ex_token(wordpiece, 3)
    )
    assert "activation" in ctx.all("span", "act")[0].attrs["title"]
    assert "fires on 1.23% of tokens" in text


@pytest.mark.parametrize("n", [1, SIDEWAYS_MAX_SAES, SIDEWAYS_MAX_SAES + 1])
def test_comparison_table_fits_a_narrow_window(n):
    results = [{"name": f"sae{i}", "fvu": 0.1 * i, "l0": 8.0, "pooled_cosine_score": 0.9} for i in range(n)]
    table = Tree(comparison_table_html(results)).root
    header = [th.text() for th in table.all("thead")[0].all("th")]
    if n <= SIDEWAYS_MAX_SAES:  # one column per SAE, a row per measured metric
        assert header == ["metric", *(r["name"] for r in results)]
        assert [tr.all("th")[0].text() for tr in table.all("tbody")[0].all("tr")] == [
            "L0",
            "FVU",
            "pooled-cosine score",
        ]
    else:
        assert header == ["SAE", "L0", "FVU", "pooled-cosine score"]


def test_dashboard_shows_the_judge_command_and_quiet_markers(wordpiece, tmp_path):
    from saeforge.interpret.pipeline import interpret
    from saeforge.report.dashboard import write_dashboard
    from tests.interpret.helpers import identity_sae, planted_stream

    batches, tokens = planted_stream(n_seq=30)  # ids < 8 drive latents; ids 0-4 are WordPiece's specials
    result = interpret(identity_sae(8), batches, [2, 6], k=4, tokens_of=lambda s: tokens[s],
                       decode=tokenizer_decode(wordpiece))  # fmt: skip
    result.meta.update(sae="SAE_DIR", activations="STORE_DIR")
    index = Tree(write_dashboard(result, tmp_path).read_text()).root
    command = f"saeforge interpret --sae SAE_DIR --activations STORE_DIR --latent-ids 2,6 --out {tmp_path} --judge-url"
    assert command in index.text()
    page = Tree((tmp_path / "latents" / "2.html").read_text()).root
    assert command in page.text()
    assert [s.text() for s in page.all("span", "sp")].count("[CLS]") > 0  # id 2 is [CLS]: the latent's token
    assert all(
        s.attrs["title"].startswith("activation ") for s in page.all("span", "t") if "style" in s.attrs
    )
    assert page.all("div", "head") and "activation (SAE latent units)" in page.text()


CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.skipif(CHROMIUM is None, reason="headless chromium not installed (apt-get install chromium)")
def test_report_has_no_horizontal_overflow_at_800_px(wordpiece, tmp_path):
    html, _ = _report(wordpiece, tmp_path, n_saes=2)
    probe = "<script>document.title = 'width=' + document.documentElement.scrollWidth;</script></body>"
    path = tmp_path / "report.html"
    path.write_text(html.replace("</body>", probe))
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=800,600",
         "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    width = int(re.search(r"<title>width=(\d+)</title>", out.stdout).group(1))
    assert width <= 800
