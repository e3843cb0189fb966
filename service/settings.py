"""Service settings: command-line flags override VAE_* environment variables, which override defaults."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_MODEL_DIR = REPO_ROOT / "models" / "mnist_vae" / "1"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VAE_", frozen=True)

    host: str = Field("127.0.0.1", description="Interface uvicorn binds to.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port uvicorn listens on.")
    model_dir: Path = Field(BUNDLED_MODEL_DIR, description="SavedModel dir with metadata.json.")
    log_level: str = Field("info", description="Python and uvicorn log level.")
    access_log: bool = Field(False, description="Log every request (costs throughput under load).")
    gpu_memory_growth: bool = Field(True, description="Let TensorFlow grow GPU memory instead of claiming the card.")
    tf_intra_op_threads: int = Field(0, ge=0, description="Threads per TensorFlow op; 0 lets TensorFlow choose.")
    gil_switch_interval_ms: float = Field(0.2, gt=0, description="How long a busy thread keeps the GIL from a waiting "
                                          "one (Python's default: 5 ms); short, so model calls are not held up.")

    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0, description="Largest request body accepted (413 above).")
    max_images: int = Field(256, gt=0, description="Most images or latents in one request.")
    max_image_pixels: int = Field(25_000_000, gt=0, description="Largest declared width*height of an upload.")
    max_samples: int = Field(256, gt=0, description="Largest n for /v1/samples.")
    max_posterior_samples: int = Field(16384, gt=0, description="Most posterior samples (k x images) in one score, "
                                       "encode or reconstruct request (each costs a decode in score and reconstruct).")

    batch_max_size: int = Field(256, gt=0, description="Most images merged into one model call; 1 turns batching off.")
    batch_max_delay_ms: float = Field(2.0, ge=0, description="Longest wait for company, from a batch's first item.")
    queue_max: int = Field(1024, gt=0, description="Requests waiting per signature before new ones get 503.")
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds sent with 503 answers.")
