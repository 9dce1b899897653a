"""Is the model's confidence honest? Reliability bins, ECE and temperature scaling.

NumPy only, so the app (CPU, no torch needed here) and the trainer share one
definition. Conventions follow Guo et al. 2017, "On Calibration of Modern
Neural Networks": equal-width confidence bins (lower, upper], ECE weighted by
the fraction of samples per bin, and one temperature T dividing the logits,
fitted by minimising the negative log-likelihood.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _numpy(x: Any, dtype: type) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def reliability(confidence: Any, correct: Any, n_bins: int = 15) -> dict[str, list]:
    """Per-bin mean confidence, accuracy and count.

    ``confidence``: the probability of the predicted class, in [0, 1];
    ``correct``: whether the prediction was right (bool or 0/1).
    Empty bins report confidence 0.0, accuracy 0.0 and count 0.
    """
    conf = _numpy(confidence, np.float64).ravel()
    hit = _numpy(correct, np.float64).ravel()
    if conf.shape != hit.shape:
        raise ValueError(f"confidence has {conf.size} values but correct has {hit.size}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    if conf.size and (np.nanmin(conf) < 0 or np.nanmax(conf) > 1 or np.isnan(conf).any()):
        raise ValueError("confidence values must be probabilities in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 joins bin 0.
    which = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    conf_sum = np.bincount(which, weights=conf, minlength=n_bins)
    hit_sum = np.bincount(which, weights=hit, minlength=n_bins)
    safe = np.maximum(count, 1)
    return {
        "bin_lower": edges[:-1].tolist(),
        "bin_upper": edges[1:].tolist(),
        "confidence": (conf_sum / safe).tolist(),
        "accuracy": (hit_sum / safe).tolist(),
        "count": count.astype(int).tolist(),
    }


def expected_calibration_error(confidence: Any, correct: Any, n_bins: int = 15) -> float:
    """Sum over bins of (bin's share of samples) * |accuracy - confidence|; 0 = calibrated."""
    bins = reliability(confidence, correct, n_bins)
    count = np.asarray(bins["count"], dtype=np.float64)
    total = count.sum()
    if total == 0:
        return 0.0
    gap = np.abs(np.asarray(bins["accuracy"]) - np.asarray(bins["confidence"]))
    return float((count / total * gap).sum())


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    z = _numpy(logits, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll_slope(beta: float, z: np.ndarray, z_true: np.ndarray) -> float:
    """d/d(beta) of the mean NLL of softmax(beta * z): E_p[z] - z_true, averaged."""
    p = softmax(z * beta)
    return float(((p * z).sum(axis=1) - z_true).mean())


def fit_temperature(logits: Any, labels: Any, t_min: float = 0.05, t_max: float = 20.0) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) on these labels.

    The NLL is convex in beta = 1/T (a log-sum-exp of functions linear in
    beta minus a linear term), so its slope is increasing and bisection on
    log(beta) finds the unique minimum. The result is clipped to
    [t_min, t_max]: perfectly separable data would otherwise push T to 0.
    """
    z = _numpy(logits, np.float64)
    y = _numpy(labels, np.int64).ravel()
    if z.ndim != 2 or z.shape[0] != y.size:
        raise ValueError(f"logits must be (n, classes) with n = len(labels); got {z.shape} and {y.size} labels")
    if y.size == 0:
        raise ValueError("cannot fit a temperature on zero samples")
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or infinity")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels must be in 0..{z.shape[1] - 1}")
    z_true = z[np.arange(y.size), y]
    lo, hi = np.log(1.0 / t_max), np.log(1.0 / t_min)  # in log(beta)
    if _nll_slope(np.exp(lo), z, z_true) >= 0:
        return float(t_max)
    if _nll_slope(np.exp(hi), z, z_true) <= 0:
        return float(t_min)
    for _ in range(60):  # interval shrinks 2**60-fold: far below float precision of T
        mid = 0.5 * (lo + hi)
        if _nll_slope(np.exp(mid), z, z_true) > 0:
            hi = mid
        else:
            lo = mid
    return float(1.0 / np.exp(0.5 * (lo + hi)))
