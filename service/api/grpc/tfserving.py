"""TF Serving's gRPC API, on tensorflow-serving-api's stubs: `tensorflow.serving.PredictionService` (Predict,
GetModelMetadata) and `tensorflow.serving.ModelService` (GetModelStatus); Classify, Regress, MultiInference and
HandleReloadConfigRequest answer UNIMPLEMENTED.

The same signatures as the REST API (contract.tfserving_signature_names; serving_default is encode), chosen with
`model_spec.signature_name`, the version with `model_spec.version`. Tensors are `TensorProto`s: `tensor_content`
(raw little-endian bytes) or the typed field of their dtype (float_val, int_val, ...), never both; answers carry
tensor_content, which tf.make_ndarray reads."""

from math import prod

import grpc
import numpy as np
from google.protobuf import any_pb2, json_format
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2,
    predict_pb2,
    prediction_service_pb2,
)

import contract
from service.api.grpc.server import GRPC_STATUS, Edge, Protocol
from service.api.tfserving import codec as tfserving
from service.serving import dataplane
from service.serving.errors import InvalidInput, NotFound
from service.serving.registry import Serving, UnknownModelError, Version
from service.serving.signatures import SignatureSpec, TensorSpec, cast_input, served_signature

PREDICTION_SERVICE = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"]
MODEL_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"]
SIGNATURE_DEF = "signature_def"

_DT = {np.dtype(name): getattr(types_pb2, dt) for name, dt in
       {"float32": "DT_FLOAT", "float64": "DT_DOUBLE", "int32": "DT_INT32", "int64": "DT_INT64", "uint8": "DT_UINT8",
        "bool": "DT_BOOL", "float16": "DT_HALF", "int8": "DT_INT8", "int16": "DT_INT16", "uint16": "DT_UINT16",
        "uint32": "DT_UINT32", "uint64": "DT_UINT64"}.items()}
_NP_OF_DT = {dt: dtype for dtype, dt in _DT.items()}
_VALUES = {types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val", types_pb2.DT_INT32: "int_val",
           types_pb2.DT_INT16: "int_val", types_pb2.DT_INT8: "int_val", types_pb2.DT_UINT8: "int_val",
           types_pb2.DT_UINT16: "int_val", types_pb2.DT_INT64: "int64_val", types_pb2.DT_BOOL: "bool_val",
           types_pb2.DT_UINT32: "uint32_val", types_pb2.DT_UINT64: "uint64_val"}
_VALUE_FIELDS = frozenset({"float_val", "double_val", "int_val", "int64_val", "bool_val", "half_val", "uint32_val",
                           "uint64_val", "string_val", "scomplex_val", "dcomplex_val", "resource_handle_val",
                           "variant_val", "float8_val"})


def dt_name(dt: int) -> str:
    return types_pb2.DataType.Name(dt) if dt in types_pb2.DataType.values() else str(dt)


# -- the codec


def wanted(spec) -> str:
    version = f", {spec.version.value}" if spec.HasField("version") else ""
    return f"{'Specific' if version else 'Latest'}({spec.name}{version})"


def lease(plane: dataplane.DataPlane, spec) -> Version:
    """The version a ModelSpec names (name and version), leased; TF Serving's NOT_FOUND otherwise."""
    if spec.WhichOneof("version_choice") == "version_label":
        raise InvalidInput(f"version labels are not supported (got '{spec.version_label}'): name a version number")
    version = spec.version.value if spec.HasField("version") else None
    if version is not None and version < 1:
        raise InvalidInput(f"model_spec.version must be a positive integer, got {version}")
    try:
        record = plane.lease(version)
    except NotFound:
        record = None
    if record is None or record.serving.model.name != spec.name:
        if record is not None:
            plane.release(record)
        raise NotFound(f"Servable not found for request: {wanted(spec)}")
    return record


def signature_of(serving: Serving, name: str) -> SignatureSpec:
    name = name or contract.SERVING_DEFAULT
    signature = served_signature(serving.model, name) if name in contract.tfserving_signature_names() else None
    if signature is None:
        raise InvalidInput(f'Serving signature name: "{name}" not found in signature def')
    return signature


def parse_inputs(request: predict_pb2.PredictRequest, signature: SignatureSpec) -> dict[str, np.ndarray]:
    unexpected = sorted(set(request.inputs) - {spec.name for spec in signature.inputs})
    if unexpected:
        raise InvalidInput(f"input {unexpected[0]!r} is not an input of signature '{signature.name}', which takes "
                           f"{[spec.name for spec in signature.inputs]}")
    missing = [spec.name for spec in signature.inputs if spec.name not in request.inputs]
    if missing:
        raise InvalidInput(f"signature '{signature.name}' expects inputs {[s.name for s in signature.inputs]}, "
                           f"missing {missing}")
    return {spec.name: tensor_array(request.inputs[spec.name], spec) for spec in signature.inputs}


def tensor_array(proto: tensor_pb2.TensorProto, spec: TensorSpec) -> np.ndarray:
    expected = _DT[spec.dtype]
    if proto.dtype != expected:
        raise InvalidInput(f"input '{spec.name}' has dtype {dt_name(proto.dtype)}, the signature expects "
                           f"{dt_name(expected)}")
    if proto.tensor_shape.unknown_rank:
        raise InvalidInput(f"input '{spec.name}' has an unknown rank; give its shape")
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if not spec.accepts_shape(shape):
        raise InvalidInput(f"input '{spec.name}' has shape {shape}, the signature expects {spec.shape_text()}")
    count = prod(shape)
    typed = [field.name for field, _ in proto.ListFields() if field.name in _VALUE_FIELDS]
    if proto.tensor_content:
        if typed:
            raise InvalidInput(f"input '{spec.name}' has both tensor_content and {', '.join(typed)}: send one")
        needed = count * spec.dtype.itemsize
        if len(proto.tensor_content) != needed:
            raise InvalidInput(f"input '{spec.name}' has {len(proto.tensor_content)} bytes of tensor_content, its "
                               f"shape {shape} of {dt_name(expected)} needs {needed}")
        return np.frombuffer(proto.tensor_content, spec.dtype.newbyteorder("<")).reshape(shape)
    field = _VALUES.get(expected)
    if field is None:
        raise InvalidInput(f"input '{spec.name}' is {dt_name(expected)}: send its values as tensor_content")
    if any(name != field for name in typed):
        raise InvalidInput(f"input '{spec.name}' is {dt_name(expected)}: its values belong in {field} or "
                           f"tensor_content, got {', '.join(typed)}")
    values = getattr(proto, field)
    if len(values) != count:
        raise InvalidInput(f"input '{spec.name}' has {len(values)} values in {field}, its shape {shape} needs {count}")
    kind = spec.dtype.kind
    array = np.array(values, dtype=np.float64 if kind == "f" else np.int64 if kind in "iu" else bool)
    return cast_input(array, spec.name, spec.dtype).reshape(shape)


def tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(
        dtype=_DT[array.dtype.newbyteorder("=")],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[{"size": d} for d in array.shape]),
        tensor_content=np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes())


def output_names(request: predict_pb2.PredictRequest, signature: SignatureSpec) -> list[str]:
    names = [spec.name for spec in signature.outputs]
    if not request.output_filter:
        return names
    unknown = [name for name in request.output_filter if name not in names]
    if unknown:
        raise InvalidInput(f"output_filter names {unknown}, not outputs of signature '{signature.name}', which has "
                           f"{names}")
    return list(dict.fromkeys(request.output_filter))


def model_spec(serving: Serving, signature_name: str = "") -> dict:
    return {"name": serving.model.name, "version": {"value": serving.model.version}, "signature_name": signature_name}


# -- the handlers


class Handlers:
    def __init__(self, edge: Edge):
        self.dataplane = edge.dataplane

    async def Predict(self, request: predict_pb2.PredictRequest, context):
        record = lease(self.dataplane, request.model_spec)
        try:
            serving = record.serving
            signature = signature_of(serving, request.model_spec.signature_name)
            inputs = parse_inputs(request, signature)
            names = output_names(request, signature)
            results = await dataplane.run_signature(serving, signature, inputs)
            return predict_pb2.PredictResponse(
                model_spec=model_spec(serving, request.model_spec.signature_name or contract.SERVING_DEFAULT),
                outputs={name: tensor_proto(results[name]) for name in names})
        finally:
            self.dataplane.release(record)

    async def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context):
        fields = list(request.metadata_field)
        if not fields:
            raise InvalidInput("GetModelMetadataRequest must specify at least one metadata_field")
        if any(field != SIGNATURE_DEF for field in fields):
            raise InvalidInput(f"Metadata field {next(f for f in fields if f != SIGNATURE_DEF)} is not supported")
        record = lease(self.dataplane, request.model_spec)
        try:
            serving = record.serving
            document = tfserving.metadata(serving.model)["metadata"][SIGNATURE_DEF]
            signature_defs = json_format.ParseDict(document, get_model_metadata_pb2.SignatureDefMap())
            packed = any_pb2.Any()
            packed.Pack(signature_defs)
            return get_model_metadata_pb2.GetModelMetadataResponse(model_spec=model_spec(serving),
                                                                   metadata={SIGNATURE_DEF: packed})
        finally:
            self.dataplane.release(record)

    async def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context):
        spec = request.model_spec
        if spec.WhichOneof("version_choice") == "version_label":
            raise InvalidInput(f"version labels are not supported (got '{spec.version_label}')")
        version = spec.version.value if spec.HasField("version") else None
        try:
            document = self.dataplane.registry.status_document(spec.name, version)
        except UnknownModelError as err:
            raise NotFound(str(err)) from None
        return json_format.ParseDict(document, get_model_status_pb2.GetModelStatusResponse())


def add(server: grpc.aio.Server, edge: Edge) -> list[str]:
    handlers = Handlers(edge)
    server.add_generic_rpc_handlers([
        edge.generic_handler(PREDICTION_SERVICE, {"Predict": handlers.Predict,
                                                  "GetModelMetadata": handlers.GetModelMetadata}),
        edge.generic_handler(MODEL_SERVICE, {"GetModelStatus": handlers.GetModelStatus}),
    ])
    return [PREDICTION_SERVICE.full_name, MODEL_SERVICE.full_name]


def protocol(port: int) -> Protocol:
    return Protocol(tfserving.PROTOCOL, port, add, GRPC_STATUS)
