"""Prometheus metrics, one registry per app: requests (counted by the HTTP edge), model calls and batches."""


from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = {"registry": self.registry}
        # protocol: v1, kserve_v2, tfserving (the gRPC metrics' names for the same protocols), ops, playground, docs
        self.requests = Counter("vae_http_requests_total", "HTTP requests by protocol, route and status.",
                                ["protocol", "method", "route", "status"], **labels)
        self.latency = Histogram("vae_http_request_duration_seconds", "HTTP request latency.",
                                 ["protocol", "method", "route"], buckets=LATENCY_BUCKETS, **labels)
        # Model metrics carry the model version that served (several are loaded during a rollout).
        model = ["signature", "version"]
        self.inference = Histogram("vae_model_inference_seconds", "Model call time per batch.",
                                   model, buckets=LATENCY_BUCKETS, **labels)
        self.batch_size = Histogram("vae_batch_size_images", "Rows per model call, in the signature's unit: images "
                                    "(encode, reconstruct), latents (decode), digits (sample), decodes = k x images "
                                    "(score).",
                                    model, buckets=BATCH_BUCKETS, **labels)
        self.queue_wait = Histogram("vae_batch_queue_wait_seconds", "Time a request waits in the queue.",
                                    model, buckets=LATENCY_BUCKETS, **labels)
        self.queue_depth = Gauge("vae_batch_queue_depth", "Requests waiting in the queue.", model, **labels)
        self.rejected = Counter("vae_batch_rejected_total", "Requests turned away with 503: the queue was full, or "
                                "its queued work could not finish within the deadline.",
                                model, **labels)
        self.expired = Counter("vae_batch_expired_total", "Requests answered 504: queued longer than the deadline.",
                               model, **labels)
        self.load_failures = Counter("vae_model_load_failures_total", "Model versions refused: load, contract check "
                                     "or warm-up failed.", ["version"], **labels)
