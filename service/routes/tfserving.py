"""TF Serving REST API: predict and model metadata (the status route `GET /v1/models/{name}` is in ops.py).

Signatures are chosen with `signature_name` (contract.tfserving_signature_names; serving_default is encode). Errors
are {"error": ...} (service/errors.py)."""

from fastapi import APIRouter, HTTPException, Request, Response

from service.codecs import tfserving
from service.codecs.signatures import ProtocolError, run_signature, serving_for
from service.deps import Serving
from service.payloads import read_body
from service.responses import json_response
from service.routing import LeanRoute

router = APIRouter(prefix="/v1/models", tags=["TF Serving REST"], route_class=LeanRoute)


def _serving(request: Request) -> Serving:
    """The served model named in the URL, or TF Serving's 404."""
    name, version = request.path_params["name"], request.path_params.get("version")
    wanted = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
    try:
        serving = serving_for(request, version)
    except HTTPException as err:  # the versions registry's 404 names loaded versions; TF Serving's wording wins here
        if err.status_code != 404:
            raise
        serving = None
    if serving is None or serving.model.name != name:
        raise ProtocolError(404, f"Servable not found for request: {wanted}")
    return serving


@router.post("/{name}:predict")
@router.post("/{name}/versions/{version}:predict")
async def predict(request: Request) -> Response:
    """Predict with `signature_name` and `instances` (row format) or `inputs` (columnar format)."""
    serving = _serving(request)
    body = await read_body(request, serving.settings.max_body_bytes)
    signature, inputs, format = tfserving.parse_predict(body, serving.model)
    results = await run_signature(serving, signature, inputs)
    return Response(tfserving.predict_response(signature, format, results), media_type="application/json")


@router.get("/{name}/metadata")
@router.get("/{name}/versions/{version}/metadata")
async def metadata(request: Request) -> Response:
    """The model's signature_def map, as TF Serving's GetModelMetadata answers it."""
    return json_response(tfserving.metadata(_serving(request).model))
