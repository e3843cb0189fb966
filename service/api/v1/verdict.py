"""A per-image verdict: did the model understand this picture as a digit? Pure numpy, no model call.

The signal is the negative ELBO at the posterior mean, in nats: the KL of the posterior from the N(0, I) prior
(encode's mean and scale_tril) plus the Bernoulli cross-entropy of the model input under the decoder's
probabilities at the posterior mean (reconstruct's probs: one decode). It estimates -log p(x) (it runs a few nats
above the importance-weighted NLL on MNIST's test digits) and it is placed among the model's calibration: the
IWAE NLL of MNIST's test digits (metadata.json `calibration`, the table /v1/score uses). A picture whose estimate is
less likely than all but (100 - threshold)% of test digits was not understood. bench/photos.py measures it against
the score signature's NLL (k = 32 decodes per image instead of 1) and the KL alone (no decode).
"""

from typing import Any

import numpy as np

THRESHOLD = 99.0  # percentile of the test digits' NLL beyond which a picture was not understood
EPSILON = 1e-6  # decoder probabilities are clipped to [EPSILON, 1 - EPSILON]


def kl_from_prior(mean: np.ndarray, scale_tril: np.ndarray) -> np.ndarray:
    """KL(N(mean, L L^T) || N(0, I)) per row, nats: (tr(L L^T) + |mean|^2 - d - log det(L L^T)) / 2."""
    mean = np.asarray(mean, np.float64)
    scale_tril = np.asarray(scale_tril, np.float64)
    diagonal = np.abs(np.diagonal(scale_tril, axis1=-2, axis2=-1))
    trace = (scale_tril ** 2).sum(axis=(-2, -1))
    log_det = 2 * np.log(np.maximum(diagonal, 1e-30)).sum(axis=-1)
    return 0.5 * (trace + (mean ** 2).sum(axis=-1) - mean.shape[-1] - log_det)


def distortion(images: np.ndarray, probs: np.ndarray | None = None, logits: np.ndarray | None = None) -> np.ndarray:
    """-log p(x | z) per image, nats: the Bernoulli cross-entropy of grey pixels x in [0, 1] as given (as the score
    signature scores them) under the decoder's `logits` (exact, as the score signature computes it) or `probs`
    (clipped to [EPSILON, 1 - EPSILON]: reconstruct answers probabilities only)."""
    x = np.asarray(images, np.float64).reshape(len(images), -1)
    if logits is not None:
        z = np.asarray(logits, np.float64).reshape(len(logits), -1)
        return (np.maximum(z, 0) - z * x + np.log1p(np.exp(-np.abs(z)))).sum(axis=1)
    p = np.clip(np.asarray(probs, np.float64).reshape(len(probs), -1), EPSILON, 1 - EPSILON)
    return -(x * np.log(p) + (1 - x) * np.log1p(-p)).sum(axis=1)


def signals(images: np.ndarray, mean: np.ndarray, scale_tril: np.ndarray, probs: np.ndarray | None = None,
            logits: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """{"kl", "distortion"} per image, nats (their sum is the one-decode NLL estimate)."""
    return {"kl": kl_from_prior(mean, scale_tril), "distortion": distortion(images, probs, logits)}


def percentile(nll: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """Where each NLL falls among the calibration's test digits (as /v1/score: piecewise linear, 0 below the
    smallest, 100 above the largest)."""
    return np.interp(nll, calibration["values"], calibration["levels"])


def verdict_batch(images: np.ndarray, mean: np.ndarray, scale_tril: np.ndarray, probs: np.ndarray | None = None,
                  calibration: dict[str, Any] | None = None, threshold: float = THRESHOLD, *,
                  logits: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Per image {"understood": bool | None, "nll_estimate": nats, "percentile": float | None, "threshold": float}.

    images (B, 28, 28[, 1]) the model inputs, mean (B, d) and scale_tril (B, d, d) from encode, and the decoder's
    output at `mean`: probs (B, 28, 28[, 1]) (reconstruct's) or, better, logits (decode's). Without a calibration
    (a model exported before it had one) percentile and understood are None: the service cannot tell."""
    if not (0 < threshold < 100):
        raise ValueError(f"threshold must lie strictly between 0 and 100, got {threshold}")
    if probs is None and logits is None:
        raise ValueError("the decoder's probs or logits at the posterior mean are needed")
    found = signals(images, mean, scale_tril, probs, logits)
    nll = found["kl"] + found["distortion"]
    rank = percentile(nll, calibration) if calibration else None
    out = []
    for i, value in enumerate(nll):
        p = None if rank is None else round(float(rank[i]), 2)
        out.append({"understood": None if p is None else bool(p <= threshold), "nll_estimate": round(float(value), 2),
                    "percentile": p, "threshold": threshold})
    return out
