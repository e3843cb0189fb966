"""The API examples of README.md and docs/, run as written against a live service (real uvicorn with its gRPC
servers, free ports, bash and curl, the venv's Python).

Every fenced `sh` or `python` block between an `<!-- api-examples:begin` and the next `<!-- api-examples:end` comment
of README.md, docs/api.md, docs/protocols.md and docs/operations.md runs, in that order, in one temporary folder, with
127.0.0.1:8000 (HTTP), 127.0.0.1:8081 (KServe v2 gRPC) and 127.0.0.1:8500 (TF Serving gRPC) replaced by the live
addresses. `sh` blocks run under `set -euo pipefail` with curl failing on HTTP error statuses; `python` blocks with
this interpreter. New examples in those sections are picked up without changing this file; show answers in `text`
blocks, which are not run.
"""

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.ports import free_port

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCUMENTS = [README, REPO / "docs" / "api.md", REPO / "docs" / "protocols.md", REPO / "docs" / "operations.md"]
DOCUMENTED_ADDRESS = "127.0.0.1:8000"
DOCUMENTED_GRPC = ("127.0.0.1:8081", "127.0.0.1:8500")
# curl as a test sees it: any HTTP status >= 400 is a failure (exit 22) and its body is shown.
PRELUDE = """set -euo pipefail -x
curl() { command curl --fail-with-body --silent --show-error --max-time 60 "$@"; }
"""


def api_example_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every sh and python block inside the text's api-examples sections."""
    blocks = []
    for section in re.findall(r"<!-- api-examples:begin.*?<!-- api-examples:end", text, flags=re.S):
        blocks += re.findall(r"^```(sh|python)\n(.*?)^```$", section, flags=re.M | re.S)
    return blocks


BLOCKS = [(doc.relative_to(REPO).as_posix(), language, code)
          for doc in DOCUMENTS if doc.exists() for language, code in api_example_blocks(doc.read_text())]


def test_the_marked_sections_hold_examples_of_every_model_route():
    assert api_example_blocks(README.read_text()), "README.md has no executed example"
    examples = "\n".join(code for _, _, code in BLOCKS)
    assert examples.count("curl ") >= 10
    for route in ("/v1/samples", "/v1/encode", "/v1/decode", "/v1/reconstruct", "/v1/score", "/v1/interpolate",
                  "/v1/model", "/readyz", "/v2/models/mnist_vae", "/v1/models/mnist_vae:predict"):
        assert f"{DOCUMENTED_ADDRESS}{route}" in examples, route


@pytest.fixture(scope="module")
def live_service(tmp_path_factory):
    """`python -m service` on free ports (HTTP, and both gRPC front ends), ready (warmed up); yields the addresses
    that stand for 127.0.0.1:8000, :8081 and :8500. Batches of at most 64 images, the sizes warmed before it is
    ready: with the default of 256 its model threads would go on to warm the sizes 80 to 256, seconds of CPU beside
    the examples (which send a few images)."""
    port, grpc_port, tfserving_port = free_port(), free_port(), free_port()
    log = tmp_path_factory.mktemp("service") / "service.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "VAE_GRPC": "true", "VAE_GRPC_PORT": str(grpc_port),
           "VAE_TFSERVING_GRPC_PORT": str(tfserving_port), "VAE_BATCH_MAX_SIZE": "64"}
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port)], cwd=REPO, env=env,
                                  stdout=out, stderr=out)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, f"the service exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not ready in 180 s:\n{log.read_text()}"
            try:
                if urllib.request.urlopen(f"http://{address}/readyz", timeout=2).status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        yield {DOCUMENTED_ADDRESS: address, DOCUMENTED_GRPC[0]: f"127.0.0.1:{grpc_port}",
               DOCUMENTED_GRPC[1]: f"127.0.0.1:{tfserving_port}"}
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Where the examples run: a folder with `.venv` standing for the checkout's (the examples use .venv/bin/python)."""
    path = tmp_path_factory.mktemp("readme")
    (path / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    return path


@pytest.mark.slow  # starts other processes: `python -m service`, bash and curl, the examples' interpreters
@pytest.mark.skipif(shutil.which("curl") is None, reason="the examples use curl: apt-get install curl")
@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"{doc}-{i + 1}" for i, (doc, _, _) in enumerate(BLOCKS)])
def test_api_example_runs(index, live_service, workdir):
    doc, language, code = BLOCKS[index]
    for documented, live in live_service.items():
        code = code.replace(documented, live)
    if language == "sh":
        command = ["bash", "-c", PRELUDE + code]
    else:
        command = [sys.executable, "-c", code]
    out = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, f"{doc}: example block {index + 1} ({language}) failed:\n{out.stderr[-4000:]}"


@pytest.mark.slow  # reads what test_api_example_runs wrote
def test_readme_examples_wrote_real_images(live_service, workdir):
    """After the blocks ran: the files they wrote are real images (the order of tests in this module is kept)."""
    from PIL import Image

    for name in ("samples.png", "digit.png", "decoded.png", "reconstructed.png", "my_drawing.jpg"):
        with Image.open(workdir / name) as image:
            assert image.format in ("PNG", "JPEG") and image.size[0] >= 28, name
