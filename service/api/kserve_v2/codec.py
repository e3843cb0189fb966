"""Open Inference Protocol (KServe v2) inference bodies, with Triton's binary tensor data extension.

A request body is a JSON header, optionally followed by raw little-endian tensor bytes (`binary_data_size` on an
input, `Inference-Header-Content-Length` giving the header's length). Binary inputs become numpy views on the
request bytes and binary outputs one `tobytes()` each, so no Python work is done per element either way."""

import weakref
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
import orjson
from starlette.responses import Response

import contract
from service.http.bodies import parse_json
from service.http.errors import ProtocolError
from service.serving.model import VaeModel
from service.serving.registry import Serving
from service.serving.signatures import SignatureSpec, TensorSpec, cast_input, signature_specs

# The `protocol` label of this protocol's request metrics, REST and gRPC alike.
PROTOCOL = "kserve_v2"

# KServe v2 datatype <-> numpy dtype (little-endian on the wire)
DATATYPES = {"BOOL": "?", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "i1",
             "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
_DATATYPE_OF = {np.dtype(code).newbyteorder("="): name for name, code in DATATYPES.items()}
HEADER_LENGTH = "inference-header-content-length"
JSON_TYPE = "application/json"
MAX_ID_CHARS = 256  # the request id is echoed in the answer
BINARY_TYPE = "application/octet-stream"


def datatype(dtype: np.dtype) -> str:
    name = _DATATYPE_OF.get(dtype)  # native-order dtypes, the common case, without building a new dtype
    return name if name is not None else _DATATYPE_OF[np.dtype(dtype).newbyteorder("=")]


def tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    """$metadata_tensor: variable-size dimensions are -1."""
    return {"name": spec.name, "datatype": datatype(spec.dtype), "shape": [-1 if d is None else d for d in spec.shape]}


@dataclass
class InferRequest:
    header: dict[str, Any]
    inputs: dict[str, np.ndarray]
    outputs: list[tuple[TensorSpec, bool]]  # requested outputs, in order, and whether each goes back as binary


def parse_infer(body: bytes, header_length: str | None, model: str, signature: SignatureSpec) -> InferRequest:
    """Decode and check an inference request against the signature: names, datatypes, shapes, sizes."""
    if header_length is None:
        header_end = len(body)
    elif not contract.is_count(header_length) or int(header_length) > len(body):
        raise ProtocolError(400, f"Inference-Header-Content-Length is {header_length!r}, the body has {len(body)} "
                                 "bytes")
    else:
        header_end = int(header_length)
    if header_end == 0:  # raw binary request: the whole body is the single input, batch dimension deduced
        return _raw_request(body, model, signature)
    header = parse_json(body[:header_end] if header_end < len(body) else body)
    if not isinstance(header, dict):
        raise ProtocolError(400, "the inference request must be a JSON object")
    if "id" in header and not (isinstance(header["id"], str) and len(header["id"]) <= MAX_ID_CHARS):
        raise ProtocolError(400, f"the request 'id' must be a string of at most {MAX_ID_CHARS} characters")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError(400, "the inference request needs a non-empty 'inputs' list")

    inputs, offset = {}, header_end
    for item in raw_inputs:
        array, offset = _input(item, body, offset, model, signature)
        name = item["name"]
        if name in inputs:
            raise ProtocolError(400, f"input '{name}' is given twice")
        inputs[name] = array
    missing = [spec.name for spec in signature.inputs if spec.name not in inputs]
    if missing:
        raise ProtocolError(400, f"model '{model}' expects inputs {[s.name for s in signature.inputs]}, "
                                 f"missing {missing}")
    if offset != len(body):
        raise ProtocolError(400, f"the body has {len(body) - offset} bytes beyond the header and the inputs' "
                                 "binary_data_size")
    return InferRequest(header, inputs, _requested_outputs(header, model, signature))


def _input(item: Any, body: bytes, offset: int, model: str, signature: SignatureSpec) -> tuple[np.ndarray, int]:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ProtocolError(400, "each input must be an object with a 'name'")
    name = item["name"]
    spec = signature.input(name)
    if spec is None:
        raise ProtocolError(400, f"unexpected inference input '{name}' for model '{model}', it expects "
                                 f"{[s.name for s in signature.inputs]}")
    expected = datatype(spec.dtype)
    if item.get("datatype") != expected:
        raise ProtocolError(400, f"inference input '{name}' data-type is '{item.get('datatype')}', but model "
                                 f"'{model}' expects '{expected}'")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise ProtocolError(400, f"input '{name}' needs a 'shape': a list of non-negative integers")
    if not spec.accepts_shape(shape):
        raise ProtocolError(400, f"unexpected shape for input '{name}' for model '{model}'. Expected "
                                 f"{spec.shape_text()}, got [{','.join(map(str, shape))}]")
    dtype = np.dtype(DATATYPES[expected])
    count = prod(shape)
    parameters = item.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None:
        if not isinstance(size, int) or size != count * dtype.itemsize:
            raise ProtocolError(400, f"input '{name}' has binary_data_size {size!r}, its shape {shape} of "
                                     f"{expected} needs {count * dtype.itemsize} bytes")
        if offset + size > len(body):
            raise ProtocolError(400, f"input '{name}' needs {size} bytes of binary data, the body has "
                                     f"{len(body) - offset} left")
        return np.frombuffer(body, dtype, count, offset).reshape(shape), offset + size
    if "data" not in item:
        raise ProtocolError(400, f"input '{name}' has neither 'data' nor a binary_data_size parameter")
    return _json_data(item["data"], name, shape, dtype), offset


def _json_data(data: Any, name: str, shape: list[int], dtype: np.dtype) -> np.ndarray:
    """Tensor data given in JSON, nested or flat, row-major."""
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        array = None
    kinds = "fiub" if dtype.kind == "f" else "iu" if dtype.kind in "iu" else "b"
    if array is None or array.dtype.kind not in kinds:
        raise ProtocolError(400, f"input '{name}' data must be a list of {_kind_name(dtype)} numbers")
    if array.size != prod(shape):
        raise ProtocolError(400, f"input '{name}' has {array.size} values, its shape {shape} needs {prod(shape)}")
    return cast_input(array, name, dtype).reshape(shape)


def _kind_name(dtype: np.dtype) -> str:
    return {"f": "floating-point", "i": "integer", "u": "non-negative integer", "b": "boolean"}[dtype.kind]


def _requested_outputs(header: dict[str, Any], model: str, signature: SignatureSpec) -> list[tuple[TensorSpec, bool]]:
    parameters = header.get("parameters") or {}
    default_binary = parameters.get("binary_data_output", False) if isinstance(parameters, dict) else False
    if not isinstance(default_binary, bool):
        raise ProtocolError(400, "the binary_data_output parameter must be true or false")
    requested = header.get("outputs")
    if requested is None:
        return [(spec, default_binary) for spec in signature.outputs]
    if not isinstance(requested, list):
        raise ProtocolError(400, "'outputs' must be a list of objects with a 'name'")
    outputs = []
    for item in requested:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError(400, "'outputs' must be a list of objects with a 'name'")
        spec = signature.output(item["name"])
        if spec is None:
            raise ProtocolError(400, f"unexpected inference output '{item['name']}' for model '{model}', it has "
                                     f"{[s.name for s in signature.outputs]}")
        options = item.get("parameters") or {}
        if not isinstance(options, dict):
            raise ProtocolError(400, f"the parameters of output '{spec.name}' must be an object")
        if options.get("classification"):
            raise ProtocolError(400, "the classification extension is not supported")
        binary = options.get("binary_data", default_binary)
        if not isinstance(binary, bool):
            raise ProtocolError(400, f"binary_data of output '{spec.name}' must be true or false")
        outputs.append((spec, binary))
    return outputs


def _raw_request(body: bytes, model: str, signature: SignatureSpec) -> InferRequest:
    """Triton's raw binary request (Inference-Header-Content-Length: 0): one input, batch size from the length."""
    if len(signature.inputs) != 1 or sum(d is None for d in signature.inputs[0].shape) != 1:
        raise ProtocolError(400, f"model '{model}' takes more than one input or variable dimension: a raw binary "
                                 "request (Inference-Header-Content-Length: 0) cannot describe it")
    spec = signature.inputs[0]
    row = prod(d for d in spec.shape if d is not None) * spec.dtype.itemsize
    if not body or len(body) % row:
        raise ProtocolError(400, f"a raw binary body for input '{spec.name}' must be a non-empty multiple of {row} "
                                 f"bytes, got {len(body)}")
    shape = [len(body) // row if d is None else d for d in spec.shape]
    array = np.frombuffer(body, np.dtype(DATATYPES[datatype(spec.dtype)])).reshape(shape)
    return InferRequest({}, {spec.name: array}, [(out, True) for out in signature.outputs])


def infer_response(request: InferRequest, model: str, version: int, results: dict[str, np.ndarray]
                   ) -> tuple[bytes, dict[str, str], str]:
    """(body, headers, media type) of an inference response: the JSON header, then each binary output's bytes."""
    outputs, blobs = [], []
    for spec, binary in request.outputs:
        array = results[spec.name]
        entry = {"name": spec.name, "datatype": datatype(array.dtype), "shape": array.shape}
        if binary:
            blob = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = np.ascontiguousarray(array).reshape(-1)
        outputs.append(entry)
    header = {"model_name": model, "model_version": str(version), "outputs": outputs}
    if "id" in request.header:
        header["id"] = request.header["id"]
    text = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return text, {}, JSON_TYPE
    return b"".join([text, *blobs]), {"Inference-Header-Content-Length": str(len(text))}, BINARY_TYPE


def json(content: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type=JSON_TYPE)


SERVER_NAME = "mnist-vae"
EXTENSIONS = ["binary_tensor_data"]
_MODELS: "weakref.WeakKeyDictionary[VaeModel, dict[str, SignatureSpec]]" = weakref.WeakKeyDictionary()


def v2_models(serving: Serving) -> dict[str, SignatureSpec]:
    """v2 model name -> signature, for the signatures the loaded model has (once per loaded model)."""
    models = _MODELS.get(serving.model)
    if models is None:
        specs = signature_specs(serving.model)
        models = _MODELS[serving.model] = {name: specs[signature] for name, signature
                                           in contract.v2_model_names(serving.model.name).items() if signature in specs}
    return models
