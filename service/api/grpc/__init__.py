"""The gRPC front ends: KServe v2 / Open Inference Protocol (`inference.GRPCInferenceService`, on tritonclient's
generated stubs) and TF Serving's `PredictionService` + `ModelService` (on tensorflow-serving-api's stubs).

Each protocol is a codec plus thin handlers over the data plane (service/serving/dataplane.py), like the REST
routes of the same protocols; `server.py` is the gRPC edge they share (servers, options, TLS, API keys, request
IDs, deadlines, metrics, health, reflection, one status table per protocol). `GrpcServers.start` runs them on the
event loop of the HTTP server, from the app's lifespan, so the batchers are shared."""

from service.serving.dataplane import DataPlane
from service.serving.metrics import Metrics
from service.settings import Settings

TFSERVING_API = "tensorflow-serving-api==2.21.0"


async def start(settings: Settings, dataplane: DataPlane, metrics: Metrics, app_version: str):
    """The gRPC servers the settings ask for, started (a GrpcServers; None when VAE_GRPC is off). Raises
    GrpcStartError naming the problem (a port in use, an unreadable TLS file, a missing package)."""
    if not settings.grpc:
        return None
    from service.api.grpc.server import GrpcServers, GrpcStartError

    protocols = []
    if settings.grpc_port:
        from service.api.grpc import kserve_v2

        protocols.append(kserve_v2.protocol(settings.grpc_port, app_version))
    if settings.tfserving_grpc_port:
        try:
            from service.api.grpc import tfserving
        except ImportError as err:
            raise GrpcStartError(f"TF Serving gRPC (VAE_TFSERVING_GRPC_PORT={settings.tfserving_grpc_port}) needs "
                                 f"{TFSERVING_API} ({err}): pip install --no-deps '{TFSERVING_API}', or set "
                                 "VAE_TFSERVING_GRPC_PORT=0") from None
        protocols.append(tfserving.protocol(settings.tfserving_grpc_port))
    return await GrpcServers.start(settings, dataplane, metrics, protocols)
