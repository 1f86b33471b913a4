"""/v1/embeddings on the built-in MiniLM: equal to sentence-transformers' encode (mean pooling, normalised)."""

from __future__ import annotations

import numpy as np
import openai
import pytest

from saeforge.serve.config import ServeConfig

TEXTS = ["The cat sat on the mat.", "Sparse autoencoders find features.", "short"]


@pytest.fixture(scope="module")
def minilm():
    from saeforge.models import ModelLoadError, builtin_example_model

    try:
        return builtin_example_model()
    except ModelLoadError as e:
        pytest.skip(str(e))


def one_by_one_float64(model_dir) -> np.ndarray:
    """Reference: each text alone (no padding), float64, mean over tokens, unit norm."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).double().eval()
    out = []
    with torch.no_grad():
        for t in TEXTS:
            h = model(**tok(t, return_tensors="pt")).last_hidden_state[0]  # [T, d]
            v = h.mean(0)
            out.append((v / v.norm()).numpy())
    return np.stack(out)


def test_embeddings_equal_sentence_transformers(minilm, start_server, tmp_path):
    ref = one_by_one_float64(minilm)
    try:
        import sentence_transformers as st
    except ImportError:
        st = None
    if st is not None:
        st_ref = st.SentenceTransformer(str(minilm), device="cpu", local_files_only=True).encode(TEXTS)
        np.testing.assert_allclose(st_ref, ref, atol=1e-5)
    cfg = ServeConfig(model=minilm, model_name="minilm", audit_log=tmp_path / "audit", port=0)
    with start_server(cfg) as srv:
        c = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0)
        got = c.embeddings.create(model="minilm", input=TEXTS)  # the client asks for base64
        floats = c.embeddings.create(model="minilm", input=TEXTS[0], encoding_format="float")
        with pytest.raises(openai.BadRequestError, match="encoder model"):
            c.completions.create(model="minilm", prompt="hi", max_tokens=2)
    vecs = np.array([d.embedding for d in got.data])
    assert vecs.shape == (3, 384)
    np.testing.assert_allclose(vecs, ref, atol=1e-5)
    np.testing.assert_allclose(floats.data[0].embedding, ref[0], atol=1e-5)
    assert got.usage.prompt_tokens > len(TEXTS)
