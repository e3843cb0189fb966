"""Per-request CPU cost of the protocol code alone, in-process: our JSON encode path (parse, convert, check, write)
against the KServe v2 binary path (decode and check the header and tensor, write header + bytes), on one fixture
digit and the encode signature's outputs. No model call, no HTTP: what each path adds on the event loop.

    python bench/protocol_codec.py --calls 3000
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from serve_bench import encode_requests, v2_encode_requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.api.kserve_v2 import codec as v2  # noqa: E402
from service.api.v1.payloads import json_array, parse_json  # noqa: E402
from service.api.v1.responses import json_response  # noqa: E402
from service.serving.signatures import SignatureSpec, TensorSpec  # noqa: E402

FP32 = np.dtype(np.float32)
ENCODE = SignatureSpec("encode", (TensorSpec("images", FP32, (None, 28, 28, 1), "images:0"),),
                       tuple(TensorSpec(name, FP32, shape, f"{name}:0") for name, shape
                             in (("mean", (None, 16)), ("scale_tril", (None, 16, 16)), ("covariance", (None, 16, 16)))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    outputs = {spec.name: rng.random((1, *spec.shape[1:]), np.float32) for spec in ENCODE.outputs}
    json_body = encode_requests()[0].split(b"\r\n\r\n", 1)[1]
    head, v2_body = v2_encode_requests()[0].split(b"\r\n\r\n", 1)
    header_length = head.split(b"Inference-Header-Content-Length: ")[1].split(b"\r\n")[0].decode()

    def json_path() -> None:
        images = json_array(parse_json(json_body), "images", (28, 28), 256)[..., None]
        assert np.isfinite(images).all()
        json_response({"model": "mnist_vae", "version": 1, **outputs})

    def v2_binary_path() -> None:
        request = v2.parse_infer(v2_body, header_length, "mnist_vae", ENCODE)
        assert np.isfinite(request.inputs["images"]).all()
        v2.infer_response(request, "mnist_vae", 1, outputs)

    results = {}
    for _ in range(args.repeats):  # alternating, best of each
        for fn in (json_path, v2_binary_path):
            start = time.process_time()
            for _ in range(args.calls):
                fn()
            us = (time.process_time() - start) / args.calls * 1e6
            results[fn.__name__] = round(min(us, results.get(fn.__name__, us)), 1)
    print(json.dumps({"cpu_us_per_request": results, "calls": args.calls, "repeats": args.repeats}))


if __name__ == "__main__":
    main()
