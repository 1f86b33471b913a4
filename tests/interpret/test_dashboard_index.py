"""Dashboard HTML (structure without a browser; rendering in headless Chromium when installed) and the index."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from saeforge.interpret.index import build_index, has_fts5, search
from saeforge.interpret.pipeline import interpret
from saeforge.interpret.records import DetectionScore, load_interpretation, save_interpretation
from saeforge.report.dashboard import write_dashboard
from tests.interpret.helpers import identity_sae, planted_stream


def words(ids):
    return [f" w{i}" for i in ids]


@pytest.fixture(scope="module")
def interp():
    batches, tokens = planted_stream(n_seq=50)
    result = interpret(identity_sae(8), batches, [1, 3, 6], k=5, tokens_of=lambda s: tokens[s], decode=words)
    names = {1: "the word one in lists", 3: "mentions of cats", 6: "closing brackets of code"}
    for r in result.latents:
        r.explanation = names[r.latent]
        r.detection = DetectionScore(tp=8, fp=1, tn=9, fn=2, n_unparseable=1)
    result.attributions = [
        {
            "prompt": "a b",
            "target": " c",
            "target_logit": 1.5,
            "direct_sum": 0.7,
            "rows": [{"latent": 3, "activation": 2.0, "direct": 0.5, "ablation": -0.4}],
        }
    ]
    result.meta["sae"] = "test-sae"
    return result


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.spans: list[dict] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "span" and "t" in (a.get("class") or "").split():
            self.spans.append(a)


def parse(path) -> Page:
    p = Page()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def test_json_roundtrip(interp, tmp_path):
    save_interpretation(interp, tmp_path / "latents.json")
    back = load_interpretation(tmp_path)
    assert back == interp
    assert back.latents[0].detection.balanced_accuracy == pytest.approx((8 / 10 + 9 / 10) / 2)


def test_dashboard_structure_offline_and_highlighting(interp, tmp_path):
    index = write_dashboard(interp, tmp_path)
    page = parse(index)
    links = [a["href"] for t, a in page.tags if t == "a" and "href" in a]
    for latent in (1, 3, 6):
        assert f"latents/{latent}.html" in links
    assert "attribution.html" in links and (tmp_path / "attribution.html").exists()
    # Offline: no external URL, stylesheet link or script src anywhere.
    for f in [index, tmp_path / "attribution.html", *sorted((tmp_path / "latents").glob("*.html"))]:
        html = f.read_text()
        assert not re.search(r"(src|href)=['\"](https?:)?//", html), f
        assert not any(
            t in ("link", "img", "iframe") or (t == "script" and "src" in a) for t, a in parse(f).tags
        )
    for rec in interp.latents:
        lp = parse(tmp_path / "latents" / f"{rec.latent}.html")
        n_ctx = len(rec.top) + len(rec.quantiles) + min(5, len(rec.negatives))
        shaded = [s for s in lp.spans if "background" in (s.get("style") or "")]
        expected = sum(
            a is not None and a > 0 for c in rec.top + rec.quantiles + rec.negatives[:5] for a in c.acts
        )
        assert len(shaded) == expected > 0
        # Background alpha grows with activation: the max-activation token is the darkest.
        alphas = [float(re.search(r"rgba\(255,140,0,([\d.]+)\)", s["style"]).group(1)) for s in shaded]
        assert max(alphas) == pytest.approx(0.85)
        assert sum("c" in s["class"].split() for s in lp.spans) == n_ctx
        html = (tmp_path / "latents" / f"{rec.latent}.html").read_text()
        assert rec.explanation in html and "<svg" in html


CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p is not None), None
)


@pytest.mark.skipif(CHROMIUM is None, reason="headless chromium not installed (apt-get install chromium)")
def test_dashboard_renders_and_filters_in_chromium(interp, tmp_path):
    index = write_dashboard(interp, tmp_path)

    def dom(url):
        out = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    html = dom(index.as_uri() + "#q=cats")
    rows = re.findall(r"<tr [^>]*data-search=[^>]*>", html)
    assert [("hidden" in r, "cats" in r) for r in rows] == [(True, False), (False, True), (True, False)]
    assert "1 of 3 latents" in html
    shot = tmp_path / "latent.png"
    out = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,900",
            f"--screenshot={shot}",
            (tmp_path / "latents" / "3.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and shot.stat().st_size > 10_000


@pytest.mark.parametrize("fts", [True, False] if has_fts5() else [False])
def test_index_search(interp, tmp_path, fts):
    build_index(interp.latents, tmp_path, fts=fts)
    assert [h.latent for h in search(tmp_path, "cats")] == [3]
    assert [h.latent for h in search(tmp_path, "code brackets")] == [6]
    assert search(tmp_path, "dogs") == []
    hit = search(tmp_path, "word")[0]
    assert hit.latent == 1 and hit.balanced_accuracy == pytest.approx(0.85) and "w1" in hit.top_tokens
    if fts:
        assert [h.latent for h in search(tmp_path, "cat")] == [3]  # porter stemming and prefix match
    with pytest.raises(FileNotFoundError, match="features build"):
        search(tmp_path / "nowhere", "x")
