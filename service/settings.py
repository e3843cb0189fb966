"""Service settings: command-line flags override VAE_* environment variables, which override defaults."""

from pathlib import Path
from typing import Annotated, Literal

from PIL import Image
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_MODEL_BASE_PATH = REPO_ROOT / "models" / "mnist_vae"
BUNDLED_MODEL_DIR = BUNDLED_MODEL_BASE_PATH / "1"
VersionPolicy = Literal["latest", "specific", "all"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VAE_", frozen=True)

    host: str = Field("127.0.0.1", description="Interface uvicorn binds to.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port uvicorn listens on.")
    model_base_path: Path = Field(BUNDLED_MODEL_BASE_PATH, description="Folder of numbered version folders (TF "
                                  "Serving layout), watched for new and removed versions.")
    model_dir: Path | None = Field(None, description="One version folder, served alone and not watched (instead of "
                                   "model_base_path).")
    model_name: str | None = Field(None, description="Name the model is served under; default: its metadata's.")
    model_version_policy: VersionPolicy = Field("latest", description="Versions served: the newest that loads, a "
                                                "specific list (model_versions), or all.")
    model_versions: Annotated[tuple[int, ...], NoDecode] = Field((), description="Versions served under the "
                                                                 "`specific` policy, e.g. 1,2.")
    model_config_file: Path | None = Field(None, description="JSON file read at every poll, overriding the policy: "
                                           '{"model_version_policy": "specific", "model_versions": [1]}.')
    model_poll_s: float = Field(2.0, ge=0, description="Seconds between scans of the base path; 0: never rescan.")
    warm_up_threads: int = Field(3, ge=1, description="Signatures warmed up side by side when a version loads.")
    model_drain_timeout_s: float = Field(60.0, gt=0, description="Longest wait for a replaced version's requests.")
    log_level: str = Field("info", description="Python and uvicorn log level.")
    access_log: bool = Field(False, description="Log every request (costs throughput under load).")
    opentelemetry: bool = Field(False, description="FastAPI's own OpenTelemetry spans and metrics, active when an "
                                "OpenTelemetry SDK is set up in the process (opentelemetry-instrument). Off: FastAPI "
                                "spends ~8 us per request finding that none is.")
    gpu_memory_growth: bool = Field(True, description="Let TensorFlow grow GPU memory instead of claiming the card.")
    tf_intra_op_threads: int = Field(0, ge=0, description="Threads per TensorFlow op; 0 lets TensorFlow choose.")
    gil_switch_interval_ms: float = Field(0.2, gt=0, description="How long a busy thread keeps the GIL from a waiting "
                                          "one (Python's default: 5 ms); short, so model calls are not held up.")

    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0, description="Largest request body accepted (413 above).")
    max_images: int = Field(256, gt=0, description="Most images or latents in one request.")
    max_image_pixels: int = Field(4_000_000, gt=0, description="Largest width*height of an upload as decoded (a "
                                  "JPEG after its 1/2-1/8 scale draft decode); 413 above.")
    max_image_aspect: float = Field(20, ge=1, description="Largest ratio of an upload's long side to its short side.")
    image_formats: Annotated[tuple[str, ...], NoDecode] = Field(
        ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"), description="Pillow formats accepted (comma-separated).")
    decode_workers: int = Field(2, gt=0, description="Worker processes decoding uploads (spawned, capped by the OS); a "
                                "request uses one at a time.")
    decode_memory_mb: int = Field(192, gt=0, description="Memory a decode worker may add to its own after start "
                                  "(RLIMIT_AS); a file needing more: 413.")
    decode_cpu_s: float = Field(2.0, gt=0, description="CPU seconds one file may take in a decode worker (RLIMIT_CPU, "
                                "whole seconds up); more: 422.")
    decode_timeout_s: float = Field(5.0, gt=0, description="Wall-clock seconds one file may take in a decode worker; "
                                    "more: 422, and the worker is replaced.")
    max_samples: int = Field(256, gt=0, description="Largest n for /v1/samples.")
    max_posterior_samples: int = Field(16384, gt=0, description="Most posterior samples (k x images) in one score or "
                                       "encode request, and in one score model call (each costs a decode in score).")

    batch_max_size: int = Field(256, gt=0, description="Most images merged into one model call; 1 turns batching off.")
    batch_ready_size: int = Field(64, gt=0, description="Padded batch sizes up to this are warmed before a version is "
                                  "ready; the model threads warm the larger ones after, batches growing as they do.")
    batch_trim: bool = Field(True, description="When the model is busy, cut a batch of 16 images or more to a padded "
                             "size its oldest requests fill exactly and start the next call with the rest, instead of "
                             "computing padding rows.")
    batch_max_delay_ms: float = Field(2.0, ge=0, description="Longest wait for company, from a batch's first item.")
    queue_max: int = Field(1024, gt=0, description="Requests waiting per signature before new ones get 503.")
    queue_deadline_ms: float = Field(10_000, gt=0, description="A request that waited longer in the queue is answered "
                                     "504, not computed.")
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds sent with 503 answers.")

    playground: bool = Field(True, description="Serve the browser playground at / and /playground (false: 404).")

    header_timeout_s: float = Field(10, gt=0, description="Longest wait for a request's headers (connection closed).")
    body_timeout_s: float = Field(30, gt=0, description="Longest wait for a request's body after its headers (408).")
    keep_alive_s: float = Field(5, gt=0, description="Idle keep-alive connections are closed after this.")
    max_connections: int = Field(1000, gt=0, description="Open connections; requests on more get 503.")

    metrics_port: int = Field(0, ge=0, le=65535, description="Also serve the Prometheus metrics on this port, with no "
                              "API key (as Triton's 8002; the Docker image sets 8002); 0: only /metrics on the API "
                              "port.")
    api_keys: SecretStr | None = Field(None, description="Comma-separated keys; when set (or api_keys_file), every "
                                       "path but the probes, the API docs and the playground's files needs "
                                       "`Authorization: Bearer <key>` (gRPC: the `authorization` metadata).")
    api_keys_file: Path | None = Field(None, description="File with one API key per line (# comments allowed).")

    # gRPC front ends (service/api/grpc), in the same process and event loop as the HTTP server (shared batchers).
    grpc: bool = Field(False, description="Serve the gRPC front ends on grpc_port and tfserving_grpc_port (the Docker "
                       "image turns this on; off by default so test and benchmark processes claim no fixed ports).")
    grpc_host: str | None = Field(None, description="Interface the gRPC servers bind to; default: host.")
    grpc_port: int = Field(8081, ge=0, le=65535, description="KServe v2 / Open Inference Protocol gRPC port "
                           "(GRPCInferenceService, KServe's convention); 0: off.")
    tfserving_grpc_port: int = Field(8500, ge=0, le=65535, description="TF Serving gRPC port (PredictionService, "
                                     "ModelService; TF Serving's convention); 0: off.")
    grpc_max_message_bytes: int = Field(8 * 1024 * 1024, gt=0, description="Largest gRPC message received or sent "
                                        "(RESOURCE_EXHAUSTED above).")
    grpc_max_concurrent_streams: int = Field(128, gt=0, description="Concurrent calls per gRPC connection.")
    grpc_max_connections: int = Field(1000, gt=0, description="Open gRPC connections per port; more are refused.")
    grpc_max_connection_age_s: float = Field(300, gt=0, description="A gRPC connection is closed (GOAWAY) after this, "
                                             "so that clients reconnect and spread over the replicas of a Service.")
    grpc_max_connection_age_grace_s: float = Field(30, ge=0, description="Calls in flight on a connection past its "
                                                   "age get this long to finish.")
    grpc_keepalive_min_interval_s: float = Field(10, gt=0, description="Clients pinging more often than this get "
                                                 "strikes, then GOAWAY (keepalive enforcement).")
    grpc_drain_s: float = Field(10, ge=0, description="At shutdown, calls in flight get this long to finish before "
                                "the gRPC servers cancel them.")
    grpc_tls_cert_file: Path | None = Field(None, description="PEM certificate chain: with grpc_tls_key_file, the "
                                            "gRPC ports speak TLS (plaintext by default).")
    grpc_tls_key_file: Path | None = Field(None, description="PEM private key of grpc_tls_cert_file.")

    @field_validator("image_formats", mode="before")
    @classmethod
    def _split_formats(cls, value: object) -> object:
        if isinstance(value, str):
            value = [name for name in value.split(",") if name.strip()]
        if isinstance(value, list | tuple):
            value = tuple(str(name).strip().upper() for name in value)
            Image.init()  # Pillow's registry of the formats it reads
            unknown = [name for name in value if name not in Image.OPEN]
            if unknown or not value:
                raise ValueError(f"unknown image formats {unknown}; Pillow reads {sorted(Image.OPEN)}")
        return value

    @model_validator(mode="after")
    def _grpc_tls_needs_both(self) -> "Settings":
        if (self.grpc_tls_cert_file is None) != (self.grpc_tls_key_file is None):
            raise ValueError("gRPC TLS needs both grpc_tls_cert_file and grpc_tls_key_file")
        return self

    @model_validator(mode="after")
    def _specific_needs_versions(self) -> "Settings":
        if self.model_version_policy == "specific" and not self.model_versions:
            raise ValueError("model_version_policy 'specific' needs model_versions (VAE_MODEL_VERSIONS, e.g. 1,2)")
        return self

    @field_validator("model_versions", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        """VAE_MODEL_VERSIONS=1,2 (or a JSON list, or a list in code)."""
        if isinstance(value, str):
            value = value.strip().strip("[]")
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value
