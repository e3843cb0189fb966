"""KServe v2 / Open Inference Protocol over gRPC (`inference.GRPCInferenceService`), on the messages tritonclient
ships (tritonclient.grpc.service_pb2): ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and
ModelInfer; the other methods answer UNIMPLEMENTED.

The same models as the REST routes (contract.v2_model_names: `mnist_vae` is the default signature, encode;
`mnist_vae-decode`, ... the others), the same metadata and datatypes (service/api/kserve_v2). Tensors come as
`raw_input_contents` (little-endian bytes, one entry per input, as tritonclient sends them) or as typed `contents`,
never both; the answer uses the same form as the request (raw in, raw out)."""

from math import prod

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb

import contract
from service.api.grpc.server import GRPC_STATUS, Edge, Protocol
from service.api.kserve_v2 import codec as v2
from service.serving import dataplane
from service.serving.errors import InvalidInput, NotFound
from service.serving.registry import Serving
from service.serving.signatures import SignatureSpec, TensorSpec, cast_input

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
# The probes stay open, as /v2/health/* do over REST.
OPEN_METHODS = frozenset({"ServerLive", "ServerReady"})

# datatype -> the InferTensorContents field holding it (FP16 has none: raw only)
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents"}


# -- the codec


def parse_version(text: str) -> int | None:
    if not text:
        return None
    if not contract.is_count(text) or int(text) < 1:
        raise InvalidInput(f"model_version must be empty or a positive integer, got {text!r}")
    return int(text)


def model_signature(serving: Serving, name: str) -> SignatureSpec:
    signature = v2.v2_models(serving).get(name)
    if signature is None:
        raise NotFound(f"Request for unknown model: '{name}' is not found; models: {sorted(v2.v2_models(serving))}")
    return signature


def parse_inputs(request: pb.ModelInferRequest, signature: SignatureSpec) -> tuple[dict[str, np.ndarray], bool]:
    """The inputs as arrays checked against the signature (names, datatypes, shapes, sizes), and whether they came
    as raw bytes."""
    raw = request.raw_input_contents
    model = request.model_name
    if not request.inputs:
        raise InvalidInput("the inference request needs at least one input")
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: one per "
                           "input, in order")
    inputs = {}
    for index, tensor in enumerate(request.inputs):
        spec = signature.input(tensor.name)
        if spec is None:
            raise InvalidInput(f"unexpected inference input '{tensor.name}' for model '{model}', it expects "
                               f"{[s.name for s in signature.inputs]}")
        if tensor.name in inputs:
            raise InvalidInput(f"input '{tensor.name}' is given twice")
        expected = v2.datatype(spec.dtype)
        if tensor.datatype != expected:
            raise InvalidInput(f"inference input '{tensor.name}' data-type is '{tensor.datatype}', but model "
                               f"'{model}' expects '{expected}'")
        shape = list(tensor.shape)
        if not spec.accepts_shape(shape):
            raise InvalidInput(f"unexpected shape for input '{tensor.name}' for model '{model}'. Expected "
                               f"{spec.shape_text()}, got [{','.join(map(str, shape))}]")
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"input '{tensor.name}' has typed contents and the request has "
                                   "raw_input_contents: send one or the other")
            inputs[tensor.name] = _raw(raw[index], tensor.name, shape, spec)
        else:
            inputs[tensor.name] = _typed(tensor, shape, spec)
    return inputs, bool(raw)


def _raw(data: bytes, name: str, shape: list[int], spec: TensorSpec) -> np.ndarray:
    dtype = np.dtype(v2.DATATYPES[v2.datatype(spec.dtype)])
    needed = prod(shape) * dtype.itemsize
    if len(data) != needed:
        raise InvalidInput(f"input '{name}' has {len(data)} bytes of raw_input_contents, its shape {shape} of "
                           f"{v2.datatype(spec.dtype)} needs {needed}")
    return np.frombuffer(data, dtype).reshape(shape)


def _typed(tensor: pb.ModelInferRequest.InferInputTensor, shape: list[int], spec: TensorSpec) -> np.ndarray:
    datatype = tensor.datatype
    name = _CONTENTS.get(datatype)
    if name is None or not tensor.HasField("contents"):
        raise InvalidInput(f"input '{tensor.name}' has no contents and the request no raw_input_contents"
                           + ("" if name else f" ({datatype} travels as raw_input_contents only)"))
    contents = tensor.contents
    others = [field.name for field, _ in contents.ListFields() if field.name != name]
    if others:
        raise InvalidInput(f"input '{tensor.name}' is {datatype}, its values belong in contents.{name}, got "
                           f"{', '.join(others)}")
    values = getattr(contents, name)
    count = prod(shape)
    if len(values) != count:
        raise InvalidInput(f"input '{tensor.name}' has {len(values)} values, its shape {shape} needs {count}")
    dtype = spec.dtype
    array = np.array(values, dtype=np.float64 if dtype.kind == "f" else np.int64 if dtype.kind in "iu" else bool)
    return cast_input(array, tensor.name, dtype).reshape(shape)


def requested_outputs(request: pb.ModelInferRequest, signature: SignatureSpec) -> list[TensorSpec]:
    if not request.outputs:
        return list(signature.outputs)
    outputs = []
    for item in request.outputs:
        spec = signature.output(item.name)
        if spec is None:
            raise InvalidInput(f"unexpected inference output '{item.name}' for model '{request.model_name}', it "
                               f"has {[s.name for s in signature.outputs]}")
        if "classification" in item.parameters:
            raise InvalidInput("the classification extension is not supported")
        outputs.append(spec)
    return outputs


def infer_response(request: pb.ModelInferRequest, outputs: list[TensorSpec], version: int,
                   results: dict[str, np.ndarray], raw: bool) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=request.model_name, model_version=str(version), id=request.id)
    for spec in outputs:
        array = results[spec.name]
        datatype = v2.datatype(array.dtype)
        tensor = response.outputs.add(name=spec.name, datatype=datatype, shape=array.shape)
        if raw or datatype not in _CONTENTS:
            response.raw_output_contents.append(np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes())
        else:
            getattr(tensor.contents, _CONTENTS[datatype]).extend(array.reshape(-1).tolist())
    return response


def tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(**v2.tensor_metadata(spec))


# -- the handlers


class Handlers:
    def __init__(self, edge: Edge, version: str):
        self.dataplane = edge.dataplane
        self.version = version

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=not self.dataplane.registry.failure)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.dataplane.ready)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=v2.SERVER_NAME, version=self.version, extensions=v2.EXTENSIONS)

    async def ModelReady(self, request, context):
        if not self.dataplane.ready:
            return pb.ModelReadyResponse(ready=False)
        record = self.dataplane.lease(parse_version(request.version))
        try:
            model_signature(record.serving, request.name)
        finally:
            self.dataplane.release(record)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request, context):
        record = self.dataplane.lease(parse_version(request.version))
        try:
            serving = record.serving
            signature = model_signature(serving, request.name)
            return pb.ModelMetadataResponse(
                name=request.name, versions=[str(serving.model.version)], platform="tensorflow_savedmodel",
                inputs=[tensor_metadata(spec) for spec in signature.inputs],
                outputs=[tensor_metadata(spec) for spec in signature.outputs])
        finally:
            self.dataplane.release(record)

    async def ModelInfer(self, request, context):
        record = self.dataplane.lease(parse_version(request.model_version))
        try:
            serving = record.serving
            signature = model_signature(serving, request.model_name)
            inputs, raw = parse_inputs(request, signature)
            outputs = requested_outputs(request, signature)
            results = await dataplane.run_signature(serving, signature, inputs)
            return infer_response(request, outputs, serving.model.version, results, raw)
        finally:
            self.dataplane.release(record)


def add(server: grpc.aio.Server, edge: Edge, version: str = "1") -> list[str]:
    handlers = Handlers(edge, version)
    names = ("ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata", "ModelInfer")
    server.add_generic_rpc_handlers([edge.generic_handler(SERVICE, {name: getattr(handlers, name)
                                                                    for name in names})])
    return [SERVICE.full_name]


def protocol(port: int, app_version: str) -> Protocol:
    return Protocol(v2.PROTOCOL, port, lambda server, edge: add(server, edge, app_version), GRPC_STATUS, OPEN_METHODS)


