"""Upload decoding under hostile input: what a file declares is checked before anything is allocated
(service.api.v1.decoding), the worker processes that decode are capped by the OS and stopped at their deadline or
when the client leaves, and one request's files cannot hold every worker (service.api.v1.decode_pool).

No fixed sleeps: waits are for a condition (a worker busy, a process gone), each with a generous deadline."""

import asyncio
import functools
import os
import signal
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from service.api.v1.decode_pool import DecodePool, PoolConfig, _FairQueue
from service.api.v1.decoding import DecodeLimits, ImageError, decode_gray, estimated_seconds, jpeg_layout
from tests.service.fixtures import hostile

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
LIMITS = DecodeLimits(FORMATS, max_pixels=4_000_000, max_aspect=20)
# No header checks: only the workers' OS limits stand between these files and the machine.
UNCHECKED = DecodeLimits(FORMATS, max_pixels=4_000_000, max_aspect=20, max_buffer_bytes=1 << 40,
                         max_jpeg_scans=1 << 30, max_rle_pixels=1 << 30)
MEMORY_MB = 96


@functools.cache
def corpus(case: str) -> bytes:
    """hostile.CORPUS[case]'s file, generated once (the 3000-frame GIF takes 0.4 s)."""
    return hostile.CORPUS[case][0]()


# ---- the header checks, in process: refused before any decoding, naming the bound ----

@pytest.mark.parametrize(("case", "status", "names"), [
    ("jpeg_progressive_huge", 413, "progressive 13000x13000 image: decoding it keeps 967 MB of coefficients"),
    ("jpeg_multiscan_baseline", 413, "multi-scan 13000x13000 image: decoding it keeps 484 MB of coefficients"),
    ("jpeg_many_scans", 422, "has more than 100 scans"),
    ("tiff_huge_tile", 413, "declares a 32768x21840 tile of 2048 MB: a tile may have at most"),
    ("bmp_rle8", 413, "RLE BMPs may have at most 1000000 pixels"),
    ("bmp_rle4", 413, "RLE BMPs may have at most 1000000 pixels"),
])
def test_declared_work_over_a_bound_is_refused_naming_it(case, status, names):
    with pytest.raises(ImageError, match=names) as err:
        decode_gray(corpus(case), case, LIMITS)
    assert err.value.status == status and repr(case) in str(err.value)


@pytest.mark.parametrize("case", ["tiff_multipage", "tiff_tiled_ok", "gif_many_frames", "webp_many_frames",
                                  "apng_many_frames"])
def test_first_frame_of_many_and_small_tiles_are_decoded(case):
    image = decode_gray(corpus(case), case, LIMITS)
    assert image.size == (28, 28) and np.asarray(image).max() == 255


def test_ordinary_progressive_jpeg_within_bounds_decodes(encode_image):
    photo = np.full((1500, 2000, 3), 200, np.uint8)  # 3 MP, 4:2:0: 9 MB of coefficients
    data = encode_image(photo, "JPEG", quality=90, progressive=True)
    layout = jpeg_layout(data, 100)
    assert layout.multi_scan and 2 <= layout.scans <= 12 and layout.coefficient_bytes() < 10 * 2**20
    assert max(decode_gray(data, "photo.jpg", LIMITS).size) <= 1024


def test_jpeg_layout_skips_exif_thumbnail_and_counts_scans(encode_image):
    thumbnail = encode_image(np.zeros((16, 16), np.uint8), "JPEG")  # its SOS sits inside APP1: not a scan
    baseline = encode_image(np.zeros((64, 48), np.uint8), "JPEG")
    with_app1 = baseline[:2] + b"\xff\xe1" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail + baseline[2:]
    layout = jpeg_layout(with_app1, 100)
    assert (layout.width, layout.height, layout.scans, layout.multi_scan) == (48, 64, 1, False)


def test_rejected_formats_named_by_magic_number():
    with pytest.raises(ImageError, match=r"is a PSD image; the accepted formats are PNG"):
        decode_gray(b"8BPS" + bytes(40), "layers.psd", LIMITS)
    with pytest.raises(ImageError, match=r"looks like PNG but its header is malformed"):
        decode_gray(b"\x89PNG\r\n\x1a\n" + bytes(8), "broken.png", LIMITS)


# ---- the workers: OS caps as the backstop, deadlines, cancellation, fairness ----

@pytest.fixture(scope="module")
def pool():
    pool = DecodePool(PoolConfig(workers=2, memory_mb=MEMORY_MB, cpu_s=1, timeout_s=30))
    pool.start()
    wait_for(lambda: len(pool.pids()) == 2, "both workers to start")
    yield pool
    pool.close()


def decode(pool: DecodePool, files: list[tuple[str, bytes]], limits: DecodeLimits = LIMITS):
    return asyncio.run(pool.decode(files, limits, None, None))


def peak_mb(pid: int) -> float:
    """A process's peak resident memory (VmHWM), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def wait_for(condition, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_batched_small_files_keep_their_order_and_the_first_bad_one_is_named(pool, digit_pngs):
    files = [(f"d{i}.png", digit_pngs[i % 8]) for i in range(150)]  # batches of up to 64 files
    images, _ = decode(pool, files)
    np.testing.assert_array_equal(images[8:16], images[:8])
    np.testing.assert_array_equal(images[144:150], images[:6])
    files[97] = ("bad.png", b"\x89PNG\r\n\x1a\n" + bytes(30))
    files[120] = ("later-bad.png", b"not an image")
    with pytest.raises(ImageError, match="'bad.png'"):
        decode(pool, files)


def test_pool_decodes_like_the_in_process_path(pool, digit_pngs):
    from service.api.v1.decode_pool import load_image

    images, done = decode(pool, [(f"d{i}.png", png) for i, png in enumerate(digit_pngs)])
    expected = [load_image(png, "d", limits=LIMITS, invert=None, normalize=None) for png in digit_pngs]
    np.testing.assert_array_equal(images, np.stack([pixels for pixels, _ in expected]))
    assert done == [info for _, info in expected]


@pytest.mark.parametrize("case", [name for name, (_, refused) in hostile.CORPUS.items() if refused])
def test_hostile_file_refused_by_its_header_in_a_worker(pool, case):
    """The refusal comes from the header check (it names the bound), so nothing big was allocated: a worker's peak
    stays far under its cap."""
    with pytest.raises(ImageError, match="limit|at most") as err:
        decode(pool, [(case, corpus(case))])
    assert err.value.status in (413, 422)
    assert all(peak_mb(pid) < 200 for pid in pool.pids())


@pytest.mark.parametrize("case", ["jpeg_progressive_huge", "jpeg_multiscan_baseline", "tiff_huge_tile"])
def test_memory_cap_stops_what_the_header_checks_miss(pool, case):
    """With the header checks off, the decoder asks for 0.5 to 2 GB: the worker's address-space cap refuses it, the
    file is a 4xx and the worker's peak stays under its cap."""
    with pytest.raises(ImageError) as err:
        decode(pool, [(case, corpus(case))], UNCHECKED)
    assert 400 <= err.value.status < 500 and repr(case) in str(err.value)
    assert all(peak_mb(pid) < 200 + MEMORY_MB for pid in pool.pids())
    assert decode(pool, [("ok.png", hostile.png_small())])[0].shape == (1, 28, 28)


def test_cpu_cap_stops_a_decode_of_thousands_of_scans():
    # Its own pool with a cap under 1 s: RLIMIT_CPU counts whole seconds of the worker's CPU time, so the kernel
    # stops the decode at the worker's next whole second (within 1 s of the file's start, not 1 to 2 s).
    with closing(DecodePool(PoolConfig(workers=1, memory_mb=MEMORY_MB, cpu_s=0.5, timeout_s=30))) as pool:
        with pytest.raises(ImageError, match=r"took more than 0.5 s of CPU time to decode, the limit") as err:
            decode(pool, [("scans.jpg", hostile.jpeg_many_scans(scans=15_000))], UNCHECKED)
        assert err.value.status == 422
        assert decode(pool, [("ok.png", hostile.png_small())])[0].shape == (1, 28, 28)


def test_wall_clock_deadline_stops_a_decode():
    with closing(DecodePool(PoolConfig(workers=1, memory_mb=MEMORY_MB, cpu_s=600, timeout_s=0.2))) as pool:
        with pytest.raises(ImageError, match=r"took longer than 0.2 s to decode, the limit") as err:
            decode(pool, [("scans.jpg", hostile.jpeg_many_scans(scans=15_000))], UNCHECKED)
        assert err.value.status == 422


def test_client_leaving_stops_its_decode(pool):
    decode(pool, [("warm.png", hostile.png_small())])
    before = set(pool.pids())

    async def leave() -> None:
        task = asyncio.ensure_future(pool.decode([("scans.jpg", hostile.jpeg_many_scans(scans=15_000))], UNCHECKED,
                                                 None, None))
        while not pool.running_pids():  # the file reached a worker
            await asyncio.sleep(0.005)
        task.cancel()  # what the server does to the handler when its client disconnects
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(leave())
    wait_for(lambda: pool.busy() == 0, "the stopped worker to be replaced")
    after = set(pool.pids())
    assert len(before - after) == 1 and len(after) == 2  # the worker decoding it was killed and replaced
    assert decode(pool, [("ok.png", hostile.png_small())])[0].shape == (1, 28, 28)


def test_free_worker_goes_to_the_request_that_used_least():
    queue = _FairQueue(["w"])
    held = queue.acquire(0.0).result()
    heavy, newcomer, medium = queue.acquire(5.0), queue.acquire(0.0), queue.acquire(1.0)
    queue.release(held)
    assert newcomer.done() and not heavy.done() and not medium.done()
    queue.release(newcomer.result())
    assert medium.done() and not heavy.done()
    newcomer_cancelled = queue.acquire(0.0)
    newcomer_cancelled.cancel()  # its client left while it waited: skipped
    queue.release(medium.result())
    assert heavy.done()


def overtakes(requests: list[list[tuple[str, bytes]]]) -> tuple[int, int]:
    """One worker; `requests` are sent and all but the first wait for it; then a 28x28 PNG is sent. How many of the
    requests had ended when the PNG was decoded, and how many there were."""
    async def race(pool: DecodePool) -> int:
        attack = [asyncio.ensure_future(pool.decode(files, LIMITS, False, False)) for files in requests]
        deadline = time.monotonic() + 30
        while pool.busy() == 0 or pool.waiting() < len(requests) - 1:
            assert time.monotonic() < deadline, f"never saw one request running and the rest waiting: {pool.waiting()}"
            await asyncio.sleep(0.005)
        small = await pool.decode([("digit.png", hostile.png_small())], LIMITS, None, None)
        assert small[0].shape == (1, 28, 28)
        ended = sum(task.done() for task in attack)
        for task in attack:
            assert (await task)[0].shape[1:] == (28, 28)
        return ended

    with closing(DecodePool(PoolConfig(workers=1, memory_mb=MEMORY_MB, cpu_s=10, timeout_s=60))) as pool:
        return asyncio.run(race(pool)), len(requests)


def test_small_upload_overtakes_a_request_of_many_slow_files():
    """A request of 8 RLE BMPs (Pillow decodes them in pure Python) holds the one worker; a 28x28 PNG sent meanwhile
    waits for the file in progress, not for the other 7."""
    ended, _ = overtakes([[(f"rle{i}.bmp", hostile.bmp_rle(600, 600)) for i in range(8)]])
    assert ended == 0


def test_small_upload_overtakes_many_new_requests_of_slow_files():
    """Six one-file requests of an RLE BMP arrive first (none has used the worker yet): the PNG's smaller estimate puts
    it before the five waiting, behind the one running at most."""
    ended, count = overtakes([[(f"rle{i}.bmp", hostile.bmp_rle(600, 600))] for i in range(6)])
    assert ended <= 1 < count


def test_estimates_order_files_by_declared_work():
    small = estimated_seconds(hostile.png_small(), LIMITS)
    assert small < 0.001 < 0.1 < estimated_seconds(hostile.bmp_rle(600, 600), LIMITS)
    assert estimated_seconds(hostile.bmp_rle(), LIMITS) > estimated_seconds(hostile.bmp_rle(600, 600), LIMITS)
    assert estimated_seconds(b"\x89PNG garbage", LIMITS) >= 0.4  # unreadable: the costliest guess
    gif, webp, tiff = (hostile.gif_many_frames(4), hostile.webp_many_frames(4), hostile.tiff_tiled_ok())
    assert max(estimated_seconds(data, LIMITS) for data in (gif, webp, tiff)) < 0.001


def test_one_request_holds_at_most_one_worker(pool):
    async def run() -> int:
        files = [(f"rle{i}.bmp", hostile.bmp_rle(600, 600)) for i in range(6)]
        task = asyncio.ensure_future(pool.decode(files, LIMITS, False, False))
        most = 0
        while not task.done():
            most = max(most, pool.busy())
            await asyncio.sleep(0.002)
        assert task.result()[0].shape == (6, 28, 28)
        return most

    assert asyncio.run(run()) == 1


# ---- through the service ----

@pytest.mark.parametrize("case", list(hostile.CORPUS))
def test_hostile_uploads_answered_4xx_or_200_and_service_keeps_serving(client, as_files, digit_pngs, case):
    data, refused = corpus(case), hostile.CORPUS[case][1]
    response = client.post("/v1/encode", files=[("files", (case, data, "application/octet-stream"))])
    if refused:
        detail = response.json()["detail"]
        assert response.status_code in (413, 422) and repr(case) in detail, response.text
        assert "at most" in detail or "limit" in detail, detail
    else:
        assert response.status_code in (200, 400, 422), response.text
    assert client.get("/readyz").status_code == 200
    assert client.post("/v1/encode", files=as_files(digit_pngs[0])).status_code == 200


def test_worker_crash_is_a_400_naming_the_file_and_the_worker_is_replaced(pool):
    decode(pool, [("warm.png", hostile.png_small())])

    async def crash() -> None:
        task = asyncio.ensure_future(pool.decode([("scans.jpg", hostile.jpeg_many_scans(scans=15_000))], UNCHECKED,
                                                 None, None))
        while not pool.running_pids():
            await asyncio.sleep(0.005)
        os.kill(pool.running_pids()[0], signal.SIGSEGV)  # as a decoder's memory-safety bug would
        with pytest.raises(ImageError, match=r"'scans.jpg' could not be decoded: the decoder crashed on it"):
            await task

    asyncio.run(crash())
    wait_for(lambda: pool.busy() == 0 and len(pool.pids()) == 2, "the crashed worker to be replaced")
    assert decode(pool, [("ok.png", hostile.png_small())])[0].shape == (1, 28, 28)
