"""TF Serving REST predict bodies (row `instances` / columnar `inputs`) and model metadata (`signature_def`), in the
shapes tensorflow_serving/g3doc/api_rest.md documents and tensorflow_serving/util/json_tensor.cc writes."""

from typing import Any, Literal

import numpy as np
import orjson

import contract
from service.http.errors import ProtocolError
from service.serving.model import VaeModel
from service.serving.signatures import SignatureSpec, TensorSpec, cast_input, served_signature, signature_specs

# The `protocol` label of this protocol's request metrics, REST and gRPC alike.
PROTOCOL = "tfserving"

Format = Literal["row", "columnar"]
_DT = {"float32": "DT_FLOAT", "float64": "DT_DOUBLE", "int32": "DT_INT32", "int64": "DT_INT64", "uint8": "DT_UINT8",
       "bool": "DT_BOOL", "float16": "DT_HALF", "int8": "DT_INT8", "int16": "DT_INT16"}
_TYPE_NAME = {"float32": "float", "float64": "double"}  # TensorFlow's DataTypeString, as in TF Serving's errors


def parse_predict(body: bytes, model: VaeModel) -> tuple[SignatureSpec, dict[str, np.ndarray], Format]:
    """The signature, its inputs as arrays, and the request's format; 400 naming the problem otherwise."""
    document = _parse_json(body)
    name = document.get("signature_name", contract.SERVING_DEFAULT)
    if not isinstance(name, str):
        raise ProtocolError(400, "'signature_name' key must be a string value.")
    name = name or contract.SERVING_DEFAULT
    signature = served_signature(model, name) if name in contract.tfserving_signature_names() else None
    if signature is None:
        raise ProtocolError(400, f'Serving signature name: "{name}" not found in signature def')
    if "instances" in document and "inputs" in document:
        raise ProtocolError(400, "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    if "instances" in document:
        return signature, _rows(document["instances"], signature), "row"
    if "inputs" in document:
        return signature, _columns(document["inputs"], signature), "columnar"
    raise ProtocolError(400, "Missing 'inputs' or 'instances' key")


def _parse_json(body: bytes) -> dict[str, Any]:
    if not body:
        raise ProtocolError(400, "JSON Parse error: The document is empty")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as err:  # NaN and Infinity too: TF Serving reads them, RFC 8259 does not
        raise ProtocolError(400, f"JSON Parse error: {err}") from None
    if not isinstance(document, dict):
        raise ProtocolError(400, "JSON Value: the request body Is not object")
    return document


def _is_object(value: Any) -> bool:
    return isinstance(value, dict) and "b64" not in value


def _rows(instances: Any, signature: SignatureSpec) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise ProtocolError(400, "Expecting 'instances' to be an list/array")
    if not instances:
        raise ProtocolError(400, "No values in 'instances' array")
    names = [spec.name for spec in signature.inputs]
    if not _is_object(instances[0]):
        if len(names) > 1:
            raise ProtocolError(400, "instances is a plain list, but expecting list of objects as multiple input "
                                     "tensors required as per tensorinfo_map")
        if any(_is_object(item) for item in instances):
            raise ProtocolError(400, "Expecting value/list but got object in the 'instances' list")
        return {names[0]: _tensor(instances, signature.inputs[0])}
    for index, item in enumerate(instances):
        if not _is_object(item):
            raise ProtocolError(400, f"Expecting object but got list at item {index} of input list")
        if set(item) != set(names):
            raise ProtocolError(400, f"Failed to process element: {index} of 'instances' list. JSON object keys "
                                     f"must be equal to: {','.join(sorted(names))}")
    return {spec.name: _tensor([item[spec.name] for item in instances], spec) for spec in signature.inputs}


def _columns(inputs: Any, signature: SignatureSpec) -> dict[str, np.ndarray]:
    if not _is_object(inputs):
        if len(signature.inputs) > 1:
            raise ProtocolError(400, "inputs is a plain value/list, but expecting an object as multiple input "
                                     "tensors required as per tensorinfo_map")
        return {signature.inputs[0].name: _tensor(inputs, signature.inputs[0])}
    arrays = {}
    for spec in signature.inputs:
        if spec.name not in inputs:
            raise ProtocolError(400, f"Missing named input: {spec.name} in 'inputs' object.")
        arrays[spec.name] = _tensor(inputs[spec.name], spec)
    return arrays


def _tensor(value: Any, spec: TensorSpec) -> np.ndarray:
    """A JSON value as a dense array of the input's dtype and shape (numbers only: our inputs are not strings, so a
    {"b64": ...} object is a type error, as TF Serving answers for a non-string tensor)."""
    expected = _TYPE_NAME.get(spec.dtype.name, spec.dtype.name)
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise ProtocolError(400, f"input '{spec.name}' is not a dense tensor: its lists have different sizes") from None
    kinds = "fiu" if spec.dtype.kind == "f" else "iu" if spec.dtype.kind in "iu" else "b"
    if array.dtype.kind not in kinds:
        found = _first_leaf(value)
        kind = "Object" if isinstance(found, dict) else type(found).__name__.replace("str", "String")
        raise ProtocolError(400, f"JSON Value: {_preview(found)} Type: {kind} is not of expected type: {expected}")
    if not spec.accepts_shape(array.shape):
        raise ProtocolError(400, f"input '{spec.name}' has shape {list(array.shape)}, the signature expects "
                                 f"{spec.shape_text()}")
    return cast_input(array, spec.name, spec.dtype, expected)


def _preview(value: Any, limit: int = 200) -> str:
    """A value as JSON for an error message, shortened, and never failing (orjson writes nesting only up to 255)."""
    try:
        text = orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return "{...}" if isinstance(value, dict) else "[...]"
    return text if len(text) <= limit else text[:limit] + "..."


def _first_leaf(value: Any) -> Any:
    while isinstance(value, list) and value:
        value = next((item for item in value if not isinstance(item, int | float) or isinstance(item, bool)),
                     value[0])
    return value


def predict_response(signature: SignatureSpec, format: Format, results: dict[str, np.ndarray]) -> bytes:
    """`predictions` (row) or `outputs` (columnar); one named output is given bare, several by name."""
    names = [spec.name for spec in signature.outputs]
    if format == "columnar":
        outputs = results[names[0]] if len(names) == 1 else {name: results[name] for name in names}
        return orjson.dumps({"outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY)
    rows = {len(results[name]) for name in names}
    if len(rows) != 1:
        raise ProtocolError(400, f"the outputs {names} have different batch sizes {sorted(rows)}; use the columnar "
                                 "format ('inputs')")
    if len(names) == 1:
        predictions = results[names[0]]
    else:
        predictions = [{name: results[name][i] for name in names} for i in range(rows.pop())]
    return orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)


def _tensor_info(spec: TensorSpec) -> dict[str, Any]:
    return {"dtype": _DT.get(spec.dtype.name, "DT_INVALID"),
            "tensor_shape": {"dim": [{"size": str(-1 if d is None else d), "name": ""} for d in spec.shape],
                             "unknown_rank": False},
            "name": spec.graph_name}


def metadata(model: VaeModel) -> dict[str, Any]:
    """GetModelMetadataResponse as TF Serving's REST API writes it (signature_def only)."""
    signature_defs = {
        name: {"inputs": {spec.name: _tensor_info(spec) for spec in signature.inputs},
               "outputs": {spec.name: _tensor_info(spec) for spec in signature.outputs},
               "method_name": "tensorflow/serving/predict", "defaults": {}}
        for name, signature in signature_specs(model).items() if name in contract.tfserving_signature_names()}
    return {"model_spec": {"name": model.name, "signature_name": "", "version": str(model.version)},
            "metadata": {"signature_def": {"signature_def": signature_defs}}}
