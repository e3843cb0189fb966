"""Latent-space maths in numpy: posterior samples and interpolation paths (no model calls here)."""

import numpy as np


def posterior_samples(mean: np.ndarray, scale_tril: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(B, k, d) draws z = mean + L eps from each image's q(z|x) = N(mean, L L^T). Image i's draws come from a
    Generator seeded with (seed, i), i its index in the request: the same image and seed give the same samples
    whatever else shares the request's batch."""
    eps = np.stack([np.random.default_rng([seed, i]).standard_normal((k, mean.shape[-1]))
                    for i in range(len(mean))]).astype(np.float32)
    return mean[:, None, :] + np.einsum("bij,bkj->bki", scale_tril, eps)


def interpolate(start: np.ndarray, end: np.ndarray, steps: int, path: str) -> np.ndarray:
    """(steps, d) points from `start` (t = 0) to `end` (t = 1). linear: (1 - t) a + t b. spherical: slerp along the
    great circle between the directions, so the points keep the norm a Gaussian prior's typical set has (White,
    "Sampling Generative Networks", 2016); falls back to linear for (anti)parallel vectors."""
    t = np.linspace(0.0, 1.0, steps)[:, None]
    a, b = start.astype(np.float64), end.astype(np.float64)
    points = (1 - t) * a + t * b
    if path == "spherical":
        cos = np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)
        omega = np.arccos(np.clip(cos, -1.0, 1.0))
        if 1e-6 < omega < np.pi - 1e-6:
            points = (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)
    points[0], points[-1] = a, b  # exactly the end points
    return points.astype(np.float32)
