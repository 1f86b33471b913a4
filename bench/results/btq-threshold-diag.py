"""One run; tau (the batch rule's k*B-th largest activation) every step; held-out L0/dead of the exported SAE for
several threshold estimates (the threshold never feeds back into training, so one run serves all)."""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, "/work/wt/btq")
from bench.quality import TOY, ToySource
from saeforge.synthetic import SyntheticActivations, feature_recovery
from saeforge.train import TrainConfig, train

problem, arch, k, d_sae, batch, tokens = (
    sys.argv[1],
    sys.argv[2],
    int(sys.argv[3]),
    int(sys.argv[4]),
    int(sys.argv[5]),
    int(sys.argv[6]),
)
extra = json.loads(sys.argv[7]) if len(sys.argv) > 7 else {}
torch.set_num_threads(1)
features = None
if problem == "toy":
    source = ToySource(batch)
    toy = SyntheticActivations(TOY)
    toy._generator = torch.Generator().manual_seed(2**31 - 1)
    held, features = toy.sample(65536), toy.features
else:
    from bench.peers.quality import store_rows

    pool = torch.from_numpy(store_rows(Path("/work/btqcap/train/layers.3.resid_post")))
    held = torch.from_numpy(store_rows(Path("/work/btqcap/heldout/layers.3.resid_post"), 40000))
    index = np.random.default_rng(0).integers(0, len(pool), size=(tokens // batch, batch))
    source = [pool[np.sort(i)] for i in index]
taus, thetas, fired_recent = [], [], torch.zeros(d_sae)
steps = tokens // batch


def on_step(ev):
    m = ev.saes[arch]
    with torch.no_grad():
        pre = m._pre_no_grad(ev.x - m.b_pre)
        r = pre.relu().flatten()
        tau = r.kthvalue(r.numel() - k * ev.x.shape[0] + 1).values.item()
        taus.append(tau)
        thetas.append(float(m.threshold))
        if ev.step > steps - 16:
            fired_recent.add_((pre >= tau).sum(0).float())
        if ev.step % 50 == 0:
            print(
                json.dumps(
                    {
                        "step": ev.step,
                        "tau": tau,
                        "theta": thetas[-1],
                        "l0_inf": float((pre > thetas[-1]).sum(1).float().mean()),
                    }
                ),
                flush=True,
            )


with tempfile.TemporaryDirectory() as tmp:
    cfg = TrainConfig(
        tokens=tokens,
        batch_size=batch,
        out=Path(tmp) / "run",
        plots=False,
        log_every=10**9,
        saes=[{"name": arch, "architecture": arch, "d_sae": d_sae, "k": k, **extra}],
    )
    [tr] = train(cfg, source=source, on_step=on_step)
sae = tr.sae


def ema(m):
    t = taus[0]
    for v in taus[1:]:
        t = m * t + (1 - m) * v
    return t


with torch.no_grad():
    pre = sae.pre_acts(held)

    def at(th):
        z = pre.relu() * (pre > th)
        xh = sae.decode(z)
        return {
            "theta": round(th, 5),
            "l0": round(float((z > 0).sum(1).float().mean()), 2),
            "dead": round(float(((z > 0).sum(0) == 0).float().mean()), 4),
            "fvu": round(float((held - xh).pow(2).sum() / (held - held.mean(0)).pow(2).sum()), 4),
        }

    r = pre.relu().flatten()
    tau_h = r.kthvalue(r.numel() - k * len(held) + 1).values.item()
    out = {
        "exported_theta": float(sae.threshold[0]),
        "mmcs": feature_recovery(sae.W_dec, features) if features is not None else None,
        "train_dead_last16": float((fired_recent == 0).float().mean()),
    }
    for name, th in [
        ("exported", float(sae.threshold[0])),
        ("heldout_tau", tau_h),
        ("last_tau", taus[-1]),
        *[(f"ema{m}", ema(m)) for m in (0.5, 0.9, 0.95, 0.99, 0.999)],
        ("mean_last10", float(np.mean(taus[-10:]))),
    ]:
        out[name] = at(th)
print("FINAL", json.dumps(out), flush=True)
np.save(f"/tmp/btq-taus-{problem}-{arch}-{k}.npy", np.array(taus))
