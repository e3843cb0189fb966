"""The likelihood-ratio outlier score in numpy: the VAE's log p(x) against an independent-pixel Bernoulli background
model stored in the metadata (contract.Background). No model call here: the route passes the NLL it got from the
score signature."""

from typing import Any

import numpy as np


def background_log_prob(images: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """log p_bg(x) per image (nats): sum_j x_j log p_j + (1 - x_j) log(1 - p_j), grey x in [0, 1] as given (the same
    Bernoulli cross-entropy the VAE's decoder scores grey pixels with)."""
    x = images.reshape(len(images), -1).astype(np.float64)
    p = np.asarray(probs, np.float64)
    return x @ np.log(p) + (1.0 - x) @ np.log1p(-p)


def log_ratio(nll: np.ndarray, images: np.ndarray, background: dict[str, Any]) -> np.ndarray:
    """llr = log p(x) - log p_bg(x) = -nll - log p_bg(x): high for digits, low for images the background model
    explains as well as the VAE does (blank, constant) or better (noise)."""
    return -np.asarray(nll, np.float64) - background_log_prob(images, background["probs"])


def ratio_percentiles(llr: np.ndarray, background: dict[str, Any]) -> np.ndarray:
    """Where each llr falls among the test set's (piecewise linear between the stored percentiles)."""
    return np.interp(llr, background["values"], background["levels"])


def ratio_outlier(llr_percentile: np.ndarray, threshold: float) -> np.ndarray:
    """An outlier when the llr is lower than that of all but (100 - threshold) percent of test digits."""
    return llr_percentile < 100.0 - threshold
