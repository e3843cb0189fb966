"""The README's API examples, run as written against a live service (real uvicorn, a free port, bash and curl).

Every fenced `sh` block between the `<!-- api-examples:begin` and `<!-- api-examples:end` comments of README.md
runs, in order, in one temporary folder, with 127.0.0.1:8000 replaced by the live address, under `set -euo pipefail`
and with curl failing on HTTP error statuses. New examples in that section are picked up without changing this file.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCUMENTED_ADDRESS = "127.0.0.1:8000"
# curl as a test sees it: any HTTP status >= 400 is a failure (exit 22) and its body is shown.
PRELUDE = """set -euo pipefail -x
curl() { command curl --fail-with-body --silent --show-error --max-time 60 "$@"; }
"""


def api_example_blocks(text: str) -> list[str]:
    begin, end = text.index("<!-- api-examples:begin"), text.index("<!-- api-examples:end")
    assert begin < end, "api-examples:begin must come before api-examples:end"
    return re.findall(r"^```sh\n(.*?)^```$", text[begin:end], flags=re.M | re.S)


BLOCKS = api_example_blocks(README.read_text())


def test_the_marked_section_holds_examples_of_every_model_route():
    examples = "\n".join(BLOCKS)
    assert examples.count("curl ") >= 10
    for route in ("/v1/samples", "/v1/encode", "/v1/decode", "/v1/reconstruct", "/v1/model", "/readyz"):
        assert f"{DOCUMENTED_ADDRESS}{route}" in examples, route


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_service(tmp_path_factory):
    """`python -m service` on a free port, ready (warmed up); yields its host:port."""
    port = _free_port()
    log = tmp_path_factory.mktemp("service") / "service.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port)], cwd=REPO,
                                  env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=out, stderr=out)
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
            time.sleep(0.2)
        yield address
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Where the examples run: a folder with `.venv` standing for the checkout's (the examples use .venv/bin/python)."""
    path = tmp_path_factory.mktemp("readme")
    (path / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    return path


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's examples use curl: apt-get install curl")
@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"block{i + 1}" for i in range(len(BLOCKS))])
def test_readme_api_example_runs(index, live_service, workdir):
    script = PRELUDE + BLOCKS[index].replace(DOCUMENTED_ADDRESS, live_service)
    out = subprocess.run(["bash", "-c", script], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"README API example block {index + 1} failed:\n{out.stderr[-4000:]}"


def test_readme_examples_wrote_real_images(live_service, workdir):
    """After the blocks ran: the files they wrote are real images (the order of tests in this module is kept)."""
    from PIL import Image

    for name in ("samples.png", "digit.png", "decoded.png", "reconstructed.png", "my_drawing.jpg"):
        with Image.open(workdir / name) as image:
            assert image.format in ("PNG", "JPEG") and image.size[0] >= 28, name
