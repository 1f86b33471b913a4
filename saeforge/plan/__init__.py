"""Estimates before spending, in two parts.

- `machine`: store disk size, SAE + Adam memory, capture and training time on this machine, from a short timed
  run of the model and of a real SAE step (`plan`).
- `layouts` and `devices`: per-rank memory, step time, wall time and cost of T x D (tensor x data parallel)
  layouts on a device spec, from formulas (`plan_layouts`; docs/training.md states them and
  bench/plan_bench.py checks them against measured steps on this CPU).

The planner sits after train/ in the stage order (it uses models, activations, sae and train), beside pipeline.py.
"""

from saeforge.lazy import lazy_exports

lazy_exports(
    __name__,
    {
        "PRESETS": "saeforge.plan.devices",
        "DeviceSpec": "saeforge.plan.devices",
        "device_spec": "saeforge.plan.devices",
        "probe_cpu": "saeforge.plan.devices",
        "Layout": "saeforge.plan.layouts",
        "LayoutConfig": "saeforge.plan.layouts",
        "LayoutPlan": "saeforge.plan.layouts",
        "parse_layout": "saeforge.plan.layouts",
        "plan_layout": "saeforge.plan.layouts",
        "plan_layouts": "saeforge.plan.layouts",
        "Plan": "saeforge.plan.machine",
        "plan": "saeforge.plan.machine",
        "time_sae_step": "saeforge.plan.machine",
        "TrainingEstimate": "saeforge.plan.machine",
        "estimate_training": "saeforge.plan.machine",
    },
)
