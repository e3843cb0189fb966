"""Open Inference Protocol (KServe v2) routes, with the binary tensor data extension that tritonclient uses.

Every signature is a v2 model (contract.v2_model_names): `mnist_vae` is the default (encode), `mnist_vae-decode`,
`mnist_vae-sample`, ... the others. Errors are {"error": ...} (service/http/errors.py)."""


from fastapi import APIRouter, Request, Response

from service.api.kserve_v2 import codec as v2
from service.http.bodies import inflate, off_loop_if_large, read_body
from service.http.errors import TENSOR_PROTOCOL_STATUS, ProtocolError
from service.http.routing import DirectRoute
from service.http.versions import ready_serving
from service.serving import dataplane
from service.serving.registry import Serving
from service.serving.signatures import SignatureSpec

router = APIRouter(prefix="/v2", tags=["KServe v2"], route_class=DirectRoute)
STATUS = TENSOR_PROTOCOL_STATUS  # the serving layer's errors as this protocol answers them ({"error": message})
PROTOCOL = v2.PROTOCOL


def belongs(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


# The protocol's health and readiness answers are status codes with an empty body; the schema must say so.
NO_BODY = {200: {"description": "true", "content": {}}, 400: {"description": "false", "content": {}}}


def _model(request: Request) -> tuple[Serving, str, SignatureSpec]:
    params = request.path_params
    name, version = params["name"], params.get("version")
    serving = ready_serving(request, version)
    signature = v2.v2_models(serving).get(name)
    if signature is None:
        raise ProtocolError(404, f"Request for unknown model: '{name}' is not found; models: "
                                 f"{sorted(v2.v2_models(serving))}")
    return serving, name, signature


# Declared first, the versionless path first (the decorator nearest the function registers first): a request is
# matched against the routes in their order, and this one carries the load.
@router.post("/models/{name}/versions/{version}/infer")
@router.post("/models/{name}/infer")
async def infer(request: Request) -> Response:
    """Inference: JSON tensors, or binary tensors after a JSON header (Inference-Header-Content-Length)."""
    serving, name, signature = _model(request)
    limit = serving.settings.max_body_bytes
    body = await read_body(request, limit)
    parsed = await off_loop_if_large(len(body), _parse, body, request.headers, limit, name, signature)
    results = await dataplane.run_signature(serving, signature, parsed.inputs)
    content, headers, media_type = v2.infer_response(parsed, name, serving.model.version, results)
    return Response(content, headers=headers, media_type=media_type)


@router.get("")
async def server_metadata(request: Request) -> Response:
    """Server metadata: name, version and the protocol extensions supported."""
    return v2.json({"name": v2.SERVER_NAME, "version": request.app.version, "extensions": v2.EXTENSIONS})


@router.get("/health/live", response_class=Response, responses=NO_BODY)
async def server_live(request: Request) -> Response:
    """200 while the service can answer; 400 (the protocol's 'false') once the model's warm-up has failed."""
    return Response(status_code=400 if request.app.state.dataplane.registry.failure else 200)


@router.get("/health/ready", response_class=Response, responses=NO_BODY)
async def server_ready(request: Request) -> Response:
    """200 once the model is loaded and warmed up, 400 (the protocol's 'false') before."""
    return Response(status_code=200 if request.app.state.dataplane.ready else 400)


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(request: Request) -> Response:
    """Model metadata: inputs and outputs with name, datatype and shape (-1: any size), from the loaded signature."""
    serving, name, signature = _model(request)
    return v2.json({"name": name, "versions": [str(serving.model.version)], "platform": "tensorflow_savedmodel",
                    "inputs": [v2.tensor_metadata(spec) for spec in signature.inputs],
                    "outputs": [v2.tensor_metadata(spec) for spec in signature.outputs]})


@router.get("/models/{name}/ready", response_class=Response, responses=NO_BODY)
@router.get("/models/{name}/versions/{version}/ready", response_class=Response, responses=NO_BODY)
async def model_ready(request: Request) -> Response:
    """200 if the model (version) is ready, 400 while the service is not ready, 404 for an unknown model."""
    if not request.app.state.dataplane.ready:
        return Response(status_code=400)
    _model(request)
    return Response(status_code=200)


def _parse(body: bytes, headers, limit: int, name: str, signature: SignatureSpec) -> v2.InferRequest:
    body = inflate(body, headers.get("content-encoding"), limit)
    return v2.parse_infer(body, headers.get(v2.HEADER_LENGTH), name, signature)
