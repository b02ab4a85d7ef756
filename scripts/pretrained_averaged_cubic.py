"""Recipe of the pretrained model ``averaged-cubic``: the variational flow-averaged drift of fastslow_cubic.

    python scripts/train_pretrained.py averaged-cubic          (about 1.5 minutes on the 2-core CPU)

Trains :class:`trainers.VariationalAveragedDynamicsModule` on ``datasets/fastslow_cubic.yaml``
(simulated and cached on first use; the whole path's likelihood every step) and ships the weights (``weights_only``
payload) with the drift error, credible intervals (sigma corrected for fast fluctuations and the Euler step, and
uncorrected), the 90% band's coverage of the true F and its median's roughness, and the validation NLL as metrics.
"""
from __future__ import annotations

DESCRIPTION = ("Flow-averaged drift of fastslow_cubic with a flow posterior over (a, b, log sigma): "
               "drift, credible band, fast-law samples and reduced-SDE simulation")

CONFIG = dict(recipe="datasets/fastslow_cubic.yaml", batch_size=512, max_steps=1000,
              model=dict(system="fastslow_cubic", theta_init=[0.5, 0.5], n_samples=32, penalty_weight=10.0,
                         penalty_points=128, learning_rate=0.005, slow_learning_rate_factor=10.0,
                         n_parameter_samples=8, likelihood="path", seed=0))


def train(args) -> dict:
    import math

    import torch

    from torchmf.averaging import drift_error
    from torchmf.averaging.variational import band_scores
    from trainers.averaged import VariationalAveragedDynamicsModule, fit_quietly
    from trainers.slow_path_data import SlowPathDataModule

    torch.set_num_threads(1)  # small models: extra threads only contend on a shared CPU
    config = dict(CONFIG)
    if getattr(args, "quick", False):
        config.update(recipe="datasets/fastslow_cubic_small.yaml", max_steps=100)
    data = SlowPathDataModule(recipe=config["recipe"], batch_size=config["batch_size"], progress=False)
    module = VariationalAveragedDynamicsModule(**config["model"])
    fit_quietly(module, data, config["max_steps"])
    model = module.model.eval()
    with torch.no_grad():
        lower, upper = model.credible_intervals(0.9, generator=torch.Generator().manual_seed(0))
        raw_lower, raw_upper = model.credible_intervals(0.9, generator=torch.Generator().manual_seed(0),
                                                        corrected_sigma=False)
        data.setup("validate")
        x, dx, dt = data.validation_set.tensors
        band = band_scores(model, n_points=100)
        metrics = {"drift_relative_l2": drift_error(model),
                   "validation_nll_per_transition": float(model.path_nll(x, dx, dt)),
                   "credible_90": {name: [float(lo), float(hi)] for name, lo, hi in
                                   zip(model.parameter_names, lower, upper)},
                   "credible_90_sigma": [math.exp(float(lower[-1])), math.exp(float(upper[-1]))],
                   "credible_90_sigma_uncorrected": [math.exp(float(raw_lower[-1])), math.exp(float(raw_upper[-1]))],
                   "band_90_contains_true_F_fraction": band["inside_fraction"],
                   "band_median_relative_l2": band["median_relative_l2"],
                   "band_median_roughness_over_true_F": band["median_roughness_ratio"],
                   "true_theta": model.system.true_theta.tolist(), "true_sigma": model.system.sigma}
    return {"payload": module.export_payload(), "builder": "torchmf.averaging:build_pretrained", "config": config,
            "metrics": metrics}
