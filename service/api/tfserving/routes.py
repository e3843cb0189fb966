"""TF Serving REST API: predict and model metadata (the status route `GET /v1/models/{name}` is in ops.py).

Signatures are chosen with `signature_name` (contract.tfserving_signature_names; serving_default is encode). Errors
are {"error": ...} (service/http/errors.py)."""

from fastapi import APIRouter, Request, Response

from service.api.tfserving import codec as tfserving
from service.http.bodies import off_loop_if_large, read_body
from service.http.errors import TENSOR_PROTOCOL_STATUS, ProtocolError
from service.http.responses import json_response
from service.http.routing import DirectRoute
from service.http.versions import ready_serving
from service.serving import dataplane
from service.serving.errors import NotFound
from service.serving.registry import Serving

router = APIRouter(prefix="/v1/models", tags=["TF Serving REST"], route_class=DirectRoute)
STATUS = TENSOR_PROTOCOL_STATUS  # the serving layer's errors as this protocol answers them ({"error": message})
PROTOCOL = tfserving.PROTOCOL


def belongs(path: str) -> bool:
    return path.startswith("/v1/models/")


def _serving(request: Request) -> Serving:
    """The served model named in the URL, or TF Serving's 404."""
    name, version = request.path_params["name"], request.path_params.get("version")
    wanted = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
    try:
        serving = ready_serving(request, version)
    except NotFound:  # the registry's message names the loaded versions; TF Serving's wording wins here
        serving = None
    if serving is None or serving.model.name != name:
        raise ProtocolError(404, f"Servable not found for request: {wanted}")
    return serving


@router.post("/{name}/versions/{version}:predict")
@router.post("/{name}:predict")  # registered first (the decorator nearest the function): the common path
async def predict(request: Request) -> Response:
    """Predict with `signature_name` and `instances` (row format) or `inputs` (columnar format)."""
    serving = _serving(request)
    body = await read_body(request, serving.settings.max_body_bytes)
    signature, inputs, format = await off_loop_if_large(len(body), tfserving.parse_predict, body, serving.model)
    results = await dataplane.run_signature(serving, signature, inputs)
    return Response(tfserving.predict_response(signature, format, results), media_type="application/json")


@router.get("/{name}/metadata")
@router.get("/{name}/versions/{version}/metadata")
async def metadata(request: Request) -> Response:
    """The model's signature_def map, as TF Serving's GetModelMetadata answers it."""
    return json_response(tfserving.metadata(_serving(request).model))
