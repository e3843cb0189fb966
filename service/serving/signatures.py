"""The served model's signatures as the tensor protocols describe them: names, dtypes and shapes, read from the
loaded SavedModel (the data plane calls them: service.serving.dataplane.run_signature)."""

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

import contract
from service.serving.errors import InvalidInput
from service.serving.model import VaeModel


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]  # None: any size (the batch dimension)
    graph_name: str  # the tensor's name in the loaded graph (TF Serving's metadata shows it)

    def shape_text(self) -> str:
        return "[" + ",".join("-1" if d is None else str(d) for d in self.shape) + "]"

    def accepts_shape(self, shape: Sequence[int]) -> bool:
        """Whether a request's tensor of `shape` fits this input, for every tensor protocol's codec (KServe v2 and TF
        Serving, REST and gRPC): the same rank with every fixed dimension equal, no negative size. A scalar input
        (shape ()) also takes [1]: KServe v2 clients send scalars as one-element tensors (tritonclient has no
        zero-rank tensor), and TF Serving reads a one-element list as a scalar in its row and columnar formats."""
        if not self.shape:
            return len(shape) == 0 or (len(shape) == 1 and shape[0] == 1)
        return len(shape) == len(self.shape) and all(
            d >= 0 and (e is None or d == e) for d, e in zip(shape, self.shape, strict=True))


@dataclass(frozen=True)
class SignatureSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.outputs if spec.name == name), None)


def cast_input(array: np.ndarray, name: str, dtype: np.dtype, type_name: str | None = None) -> np.ndarray:
    """`array` as input `name`'s dtype, for every tensor protocol's codec; InvalidInput if integers fall outside the
    dtype's range (the cast would wrap them). type_name: the dtype as the protocol names it in its errors."""
    if dtype.kind in "iu" and array.size:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidInput(f"input '{name}' has values outside the range of {type_name or dtype.name}")
    return array.astype(dtype, copy=False)


_SPECS: "weakref.WeakKeyDictionary[VaeModel, dict[str, SignatureSpec]]" = weakref.WeakKeyDictionary()


def signature_specs(model: VaeModel) -> dict[str, SignatureSpec]:
    """Every signature of the loaded model (serving_default included), computed once per model."""
    specs = _SPECS.get(model)
    if specs is None:
        specs = _SPECS[model] = {name: _signature_spec(model, name, fn) for name, fn in model.signatures.items()}
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
