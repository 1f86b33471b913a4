"""Every architecture recovers planted features (synthetic superposition) with few dead latents, in seconds.

A deliberately tiny loop: plain Adam, linear sparsity warm-up over the first half of the steps, dead latents = no
firing in the last 2k tokens (for AuxK). The real trainer lives in saeforge.train. Settings that matter at this
size: a fast warm-up lets the L0 penalty lift JumpReLU thresholds above latents that have not found their feature
yet, and those never recover; AuxK at the paper's 1/32 revives dead latents too slowly for 600 steps, so the TopK
family uses 1/4.
"""

from __future__ import annotations

import pytest
import torch

from saeforge.sae import TrainStepInput, create_training_sae
from saeforge.synthetic import SyntheticActivations, SyntheticConfig, feature_recovery

D_IN, N_FEATURES, TRUE_L0 = 32, 48, 3
SETTINGS = {
    "standard": {},
    "topk": {"k": 3, "aux_coefficient": 0.25},
    "batchtopk": {"k": 3, "aux_coefficient": 0.25},
    # this loop warms lambda up from 0 over half the run (not the trainer's default): the firing-rate init,
    # made for the controller started at step 0, leaves 3 of 48 latents dead here
    "jumprelu": {"init_firing_rate": False},
    "gated": {},
    "matryoshka": {"k": 3, "aux_coefficient": 0.25, "group_sizes": [40, 8]},
}


@pytest.fixture
def one_thread():
    """Tiny matmuls run fastest (and most reproducibly) on one thread, above all on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(arch: str, steps: int = 600, batch_size: int = 256, dead_tokens: int = 2_000, seed: int = 0):
    torch.manual_seed(seed)
    data = SyntheticActivations(SyntheticConfig(d_in=D_IN, n_features=N_FEATURES, l0=TRUE_L0, seed=seed))
    sample = data.sample(4096)
    scale = D_IN**0.5 / sample.norm(dim=1).mean().item()
    cfg = dict(architecture=arch, d_in=D_IN, d_sae=N_FEATURES, target_l0=None, seed=seed, **SETTINGS[arch])
    if arch in ("standard", "jumprelu", "gated"):
        cfg["target_l0"] = TRUE_L0
    sae = create_training_sae({k: v for k, v in cfg.items() if v is not None})
    sae.init_from_data(scale * sample)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    since_fired = torch.zeros(N_FEATURES)
    for step in range(steps):
        warmup = min(1.0, (step + 1) / (0.5 * steps))
        out = sae.training_forward(
            TrainStepInput(x=scale * data.sample(batch_size), step=step, dead_mask=since_fired >= dead_tokens,
                           sparsity_warmup=warmup)
        )  # fmt: skip
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.before_optimizer_step()
        opt.step()
        sae.after_optimizer_step()
        since_fired = torch.where(out.fired > 0, 0.0, since_fired + batch_size)
    return sae.export(scale), data


@pytest.mark.parametrize("arch", list(SETTINGS))
def test_recovers_planted_features(arch, one_thread):
    sae, data = _train(arch)
    with torch.no_grad():
        z = sae.encode(data.sample(8192))
    recovery = feature_recovery(sae.W_dec, data.features)
    dead = ((z > 0).sum(0) == 0).float().mean().item()
    l0 = (z > 0).sum(1).float().mean().item()
    assert recovery > 0.9, (recovery, dead, l0)
    assert dead < 0.05, (recovery, dead, l0)
    assert 0.5 * TRUE_L0 < l0 < 2 * TRUE_L0, (recovery, dead, l0)


def test_random_decoder_does_not_recover(one_thread):
    """The metric can fail: an untrained SAE's random decoder is far from the planted features."""
    data = SyntheticActivations(SyntheticConfig(d_in=D_IN, n_features=N_FEATURES, l0=TRUE_L0, seed=0))
    sae = create_training_sae(dict(architecture="topk", d_in=D_IN, d_sae=N_FEATURES, k=3))
    assert feature_recovery(sae.W_dec, data.features) < 0.75
