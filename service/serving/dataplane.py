"""The data plane: what every protocol asks of the model, as typed operations on one served version.

A protocol decodes its wire format, calls these and encodes the answer; it maps the ServingError subclasses raised
here to its own status codes in one table. Every limit is checked here, counted one way for every protocol, and every
piece of work is sized as its batcher counts it: model rows, i.e. images or latents, except for score, whose cost is
k x images decodes (so merged score requests never put more than VAE_MAX_POSTERIOR_SAMPLES decodes into one call)."""

from collections.abc import Awaitable, Callable

import numpy as np

import contract
from service.serving.errors import InvalidInput, LimitExceeded, NotFound, NotReady, Unsupported
from service.serving.latents import interpolate as interpolate_path
from service.serving.latents import posterior_samples
from service.serving.registry import Registry, Serving, Version
from service.serving.signatures import SignatureSpec

Outputs = dict[str, np.ndarray]
MAX_SEED = 2**62  # seed + image index stays an int64


class DataPlane:
    """Version selection and leases over the registry. A leased version is not unloaded until released."""

    def __init__(self, registry: Registry):
        self.registry = registry

    @property
    def ready(self) -> bool:
        return self.registry.ready

    def lease(self, version: int | None = None) -> Version:
        """The version `version` (None: the default, the newest the policy serves), leased until release()."""
        routing = self.registry.routing
        if version is None:
            record = routing.default
            if record is None:
                raise NotReady(self.registry.failure or self.registry.not_ready_reason())
        else:
            record = routing.versions.get(version)
            if record is None:
                if routing.default is None:
                    raise NotReady(self.registry.failure or self.registry.not_ready_reason())
                raise NotFound(f"version {version} of model {routing.default.serving.model.name} is not loaded; "
                               f"loaded versions: {sorted(routing.versions)}")
        record.leases += 1
        return record

    @staticmethod
    def release(record: Version) -> None:
        record.leases -= 1


# -- limits, each written once


def check_count(what: str, count: int, limit: int, setting: str) -> None:
    if not 1 <= count <= limit:
        error = LimitExceeded if count > limit else InvalidInput
        raise error(f"{what} must be between 1 and {limit}, got {count} ({setting})")


def check_images(serving: Serving, images: np.ndarray) -> None:
    """(B, 28, 28, 1) float32 pixels in [0, 1], B within VAE_MAX_IMAGES."""
    check_count("images", len(images), serving.settings.max_images, "VAE_MAX_IMAGES")
    shape = tuple(serving.model.metadata["image_shape"])
    if images.shape[1:] != shape:
        raise InvalidInput(f"images must have shape [B, {', '.join(map(str, shape))}], got {list(images.shape)}")
    low, high = images.min(), images.max()
    if not 0 <= low <= high <= 1:  # false for NaN too; infinity is out of range
        problem = "contain NaN" if np.isnan(low) or np.isnan(high) else f"must lie in [0, 1], got {low:g} to {high:g}"
        raise InvalidInput(f"'images' values {problem}")


def check_latents(serving: Serving, latents: np.ndarray) -> None:
    check_count("latents", len(latents), serving.settings.max_images, "VAE_MAX_IMAGES")
    if latents.shape[1:] != (serving.model.latent_size,):
        raise InvalidInput(f"latents must have shape [B, {serving.model.latent_size}], got {list(latents.shape)}")
    if not np.isfinite(latents).all():
        raise InvalidInput("latents contain NaN or infinity")


def check_budget(serving: Serving, what: str, k: int, images: int, limit: int | None = None,
                 setting: str = "VAE_MAX_POSTERIOR_SAMPLES") -> None:
    """k samples per image, k x images within `limit` (default VAE_MAX_POSTERIOR_SAMPLES)."""
    limit = serving.settings.max_posterior_samples if limit is None else limit
    if k < 1:
        raise InvalidInput(f"{what} must be at least 1, got {k}")
    if k * images > limit:
        raise LimitExceeded(f"{what} x images is {k} x {images} = {k * images}, the limit is {limit} ({setting}): "
                            f"send fewer images or a smaller {what}")


def check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise InvalidInput(f"seed must be between 0 and {MAX_SEED}, got {seed}")


# -- operations


async def encode(serving: Serving, images: np.ndarray) -> Outputs:
    """Posterior mean, covariance and scale_tril of each image."""
    check_images(serving, images)
    return await serving.batchers.encode.submit(images, len(images))


async def posterior(serving: Serving, images: np.ndarray, k: int, seed: int) -> Outputs:
    """encode's outputs plus `samples` (B, k, d): k draws per image from q(z|x), image i from (seed, i)."""
    check_images(serving, images)
    check_budget(serving, "samples", k, len(images))
    check_seed(seed)
    out = await serving.batchers.encode.submit(images, len(images))
    return {**out, "samples": posterior_samples(out["mean"], out["scale_tril"], k, seed)}


async def decode(serving: Serving, latents: np.ndarray) -> Outputs:
    """Decoder mode and probabilities of each latent vector."""
    check_latents(serving, latents)
    return await serving.batchers.decode.submit(latents, len(latents))


async def reconstruct(serving: Serving, images: np.ndarray) -> Outputs:
    """Each image's posterior mean, decoded."""
    check_images(serving, images)
    return await serving.batchers.reconstruct.submit(images, len(images))


async def reconstruct_samples(serving: Serving, images: np.ndarray, k: int, seed: int) -> tuple[Outputs, Outputs]:
    """k posterior draws per image, each decoded: (posterior's outputs, decoded (B * k) rows). Every decoded sample
    is answered, so k x images is held to what a decode request may hold (VAE_MAX_IMAGES)."""
    check_budget(serving, "samples", k, len(images), serving.settings.max_images, "VAE_MAX_IMAGES")
    out = await posterior(serving, images, k, seed)  # checks the images
    latents = out["samples"].reshape(len(images) * k, -1)
    return out, await serving.batchers.decode.submit(latents, len(latents))


async def sample(serving: Serving, n: int, seed: int) -> Outputs:
    """n digits from the prior: latents, mode, probs. The same (n, seed) gives the same digits."""
    check_count("n", n, serving.settings.max_samples, "VAE_MAX_SAMPLES")
    if not 0 <= seed < 2**63:
        raise InvalidInput(f"seed must be between 0 and 2^63 - 1, got {seed}")
    return await serving.batchers.sample.submit((n, seed), n)


async def score(serving: Serving, images: np.ndarray, k: int, seeds: np.ndarray) -> Outputs:
    """Per image: elbo, kl, distortion and the k-sample importance-weighted nll, in nats; image i's noise from
    seeds[i]. Sized k x images: the score batcher merges requests up to VAE_MAX_POSTERIOR_SAMPLES decodes."""
    require_score(serving)
    check_images(serving, images)
    check_budget(serving, "k", k, len(images))
    seeds = np.asarray(seeds).reshape(-1).astype(np.int64, copy=False)
    if len(seeds) != len(images):
        raise InvalidInput(f"seeds: one per image ({len(images)}) needed, got {len(seeds)}")
    return await serving.batchers.score.submit(((k,), images, seeds), k * len(images))


async def latents_of(serving: Serving, images: np.ndarray) -> np.ndarray:
    """The posterior means of images (the end points of an interpolation between images)."""
    return (await encode(serving, images))["mean"]


async def interpolate(serving: Serving, start: np.ndarray, end: np.ndarray, steps: int, path: str
                      ) -> tuple[np.ndarray, Outputs]:
    """`steps` points from start to end (both included), decoded: (latents, decoder outputs)."""
    if steps < 2:
        raise InvalidInput(f"steps must be at least 2, got {steps}")
    check_count("steps", steps, serving.settings.max_samples, "VAE_MAX_SAMPLES")
    if not (np.isfinite(start).all() and np.isfinite(end).all()):
        raise InvalidInput("the end points contain NaN or infinity")
    latents = interpolate_path(start, end, steps, path)
    return latents, await serving.batchers.decode.submit(latents, steps)  # steps, not images, bound the path


def require_score(serving: Serving) -> None:
    if serving.batchers.score is None:
        meta = serving.model.metadata
        raise Unsupported(f"model {meta['model_name']} version {meta['model_version']} has no score signature "
                          f"(schema {meta['schema_version']}); export it with schema "
                          f"{contract.SIGNATURE_SINCE[contract.SCORE]} or later to score images")


# -- the tensor protocols (KServe v2, TF Serving, gRPC): a signature called by name with named input tensors


def _scalar(inputs: dict[str, np.ndarray], name: str) -> int:
    array = inputs[name]
    if array.size != 1 or array.ndim > 1:
        raise InvalidInput(f"input '{name}' must be a scalar (shape [] or [1]), got shape {list(array.shape)}")
    return int(array.reshape(()))


def _image_input(inputs: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(inputs["images"], np.float32)


_SIGNATURES: dict[str, Callable[[Serving, dict[str, np.ndarray]], Awaitable[Outputs]]] = {
    contract.ENCODE: lambda s, i: encode(s, _image_input(i)),
    contract.DECODE: lambda s, i: decode(s, np.asarray(i["latents"], np.float32)),
    contract.RECONSTRUCT: lambda s, i: reconstruct(s, _image_input(i)),
    contract.SAMPLE: lambda s, i: sample(s, _scalar(i, "num_samples"), _scalar(i, "seed")),
    contract.SCORE: lambda s, i: score(s, _image_input(i), _scalar(i, "k"), i["seeds"]),
}


async def run_signature(serving: Serving, spec: SignatureSpec, inputs: dict[str, np.ndarray]) -> Outputs:
    """Call a signature with decoded input tensors (names and dtypes already matched to `spec` by the codec): the
    same operation, limits and batcher as the /v1 routes."""
    missing = [tensor.name for tensor in spec.inputs if tensor.name not in inputs]
    if missing:
        raise InvalidInput(f"signature '{spec.name}' expects inputs {[t.name for t in spec.inputs]}, missing {missing}")
    return await _SIGNATURES[spec.name](serving, inputs)
