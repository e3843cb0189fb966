"""The served model's signatures as the protocols describe them (names, dtypes, shapes, read from the loaded
SavedModel), and calling one through the service's batchers, so every protocol shares batches, limits and metrics
with our own routes."""

import weakref
from dataclasses import dataclass

import numpy as np
from fastapi import HTTPException

import contract
from service.batching import QueueFullError, ShuttingDownError
from service.deps import Serving, ready_serving
from service.model import VaeModel


class ProtocolError(HTTPException):
    """A client error found while decoding or checking a protocol request; answered as {"error": message}."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]  # None: any size (the batch dimension)
    graph_name: str  # the tensor's name in the loaded graph (TF Serving's metadata shows it)

    def shape_text(self) -> str:
        return "[" + ",".join("-1" if d is None else str(d) for d in self.shape) + "]"


@dataclass(frozen=True)
class SignatureSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.outputs if spec.name == name), None)


_SPECS: "weakref.WeakKeyDictionary[VaeModel, dict[str, SignatureSpec]]" = weakref.WeakKeyDictionary()


def signature_specs(model: VaeModel) -> dict[str, SignatureSpec]:
    """Every signature of the loaded model (serving_default included), computed once per model."""
    specs = _SPECS.get(model)
    if specs is None:
        specs = _SPECS[model] = {name: _signature_spec(model, name, fn) for name, fn in model._signatures.items()}
    return specs


def _signature_spec(model: VaeModel, name: str, fn) -> SignatureSpec:
    default = model.metadata.get("default_signature", contract.DEFAULT_SIGNATURE)
    declared = model.metadata.get("signatures", {}).get(default if name == contract.SERVING_DEFAULT else name, {})
    input_specs, output_specs = fn.structured_input_signature[1], fn.structured_outputs
    # The flat outputs of a concrete function follow the sorted keys of its structured outputs.
    graph_names = dict(zip(sorted(output_specs), (tensor.name for tensor in fn.outputs), strict=False))
    inputs = tuple(_tensor_spec(key, input_specs[key], f"{key}:0")
                   for key in _ordered(input_specs, declared.get("inputs", {})))
    outputs = tuple(_tensor_spec(key, output_specs[key], graph_names.get(key, f"{key}:0"))
                    for key in _ordered(output_specs, declared.get("outputs", {})))
    return SignatureSpec(name, inputs, outputs)


def _ordered(specs: dict, declared: dict) -> list[str]:
    """The order metadata.json lists the tensors in (a loaded signature's own order varies), then by name."""
    return [key for key in declared if key in specs] + sorted(key for key in specs if key not in declared)


def _tensor_spec(name: str, spec, graph_name: str) -> TensorSpec:
    return TensorSpec(name, np.dtype(spec.dtype.as_numpy_dtype), tuple(spec.shape.as_list()), graph_name)


def served_signature(model: VaeModel, signature: str) -> SignatureSpec | None:
    """The spec of `signature` (serving_default means the default signature), None if the model lacks it."""
    if signature == contract.SERVING_DEFAULT:
        signature = model.metadata.get("default_signature", contract.DEFAULT_SIGNATURE)
    return signature_specs(model).get(signature)


def check_rows(array: np.ndarray, spec: TensorSpec, serving: Serving) -> int:
    """Rows of a batched input, within the service's per-request limit, and finite."""
    rows = array.shape[0]
    if rows < 1:
        raise ProtocolError(400, f"input '{spec.name}' has no rows")
    if rows > serving.settings.max_images:
        raise ProtocolError(400, f"input '{spec.name}' has {rows} rows, the limit is {serving.settings.max_images}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ProtocolError(400, f"input '{spec.name}' contains NaN or infinity")
    return rows


def scalar(array: np.ndarray, spec: TensorSpec) -> int:
    """A scalar input given as shape [] or [1]."""
    if array.size != 1 or array.ndim > 1:
        raise ProtocolError(400, f"input '{spec.name}' must be a scalar (shape [] or [1]), got shape "
                                 f"{list(array.shape)}")
    return int(array.reshape(()))


async def run_signature(serving: Serving, signature: SignatureSpec, inputs: dict[str, np.ndarray]
                        ) -> dict[str, np.ndarray]:
    """Call `signature` on checked inputs through its batcher (shared with our own routes)."""
    if signature.name == contract.SAMPLE:
        n = scalar(inputs["num_samples"], signature.input("num_samples"))
        seed = scalar(inputs["seed"], signature.input("seed"))
        if not 1 <= n <= serving.settings.max_samples:
            raise ProtocolError(400, f"num_samples must be between 1 and {serving.settings.max_samples}, got {n}")
        return await _submit(serving, serving.batchers.sample, (n, seed), n)
    if signature.name == contract.SCORE and serving.batchers.score is not None:
        images = inputs["images"]
        rows = check_rows(images, signature.input("images"), serving)
        k = scalar(inputs["k"], signature.input("k"))
        seeds = inputs["seeds"].reshape(-1).astype(np.int64, copy=False)
        limit = serving.settings.max_posterior_samples
        if not 1 <= k or k * rows > limit:
            raise ProtocolError(400, f"k must be at least 1 and k x images at most {limit}, got {k} x {rows}")
        if len(seeds) != rows:
            raise ProtocolError(400, f"input 'seeds' needs one seed per image ({rows}), got {len(seeds)}")
        return await _submit(serving, serving.batchers.score, ((k,), images, seeds), rows)
    batcher = getattr(serving.batchers, signature.name, None)
    if batcher is None or len(signature.inputs) != 1:
        raise ProtocolError(404, f"signature '{signature.name}' is not served over this protocol")
    spec = signature.inputs[0]
    array = inputs[spec.name]
    return await _submit(serving, batcher, array, check_rows(array, spec, serving))


async def _submit(serving: Serving, batcher, payload, size: int) -> dict[str, np.ndarray]:
    try:
        return await batcher.submit(payload, size)
    except (QueueFullError, ShuttingDownError) as err:
        raise ProtocolError(503, f"{err}; retry later", {"Retry-After": str(serving.settings.retry_after_s)}) from None


def serving_for(request, version: str | None) -> Serving:
    """The ready Serving for a protocol request naming `version` in its path (None: the default version)."""
    return ready_serving(request, version)
