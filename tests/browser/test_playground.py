"""The playground in a real headless Chromium against the real service: draw, upload, sliders, samples.

The tests run in file order on one page (a module-scoped browser); each waits for what the page shows."""

import base64
import io
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.api.v1.decode_pool import load_image
from service.api.v1.decoding import DecodeLimits

pytestmark = pytest.mark.slow  # starts other processes or drives a browser

FIXTURES = Path(__file__).parents[1] / "service" / "fixtures"
SEVEN = FIXTURES / "mnist_test_0_label_7.png"
# The drawn 7's reconstruction correlates 0.99 with what the model saw; the fixture 7 against the 7 other MNIST
# fixture digits (2, 1, 0, 4, 1, 4, 9) correlates 0.07 to 0.40.
MIN_CORRELATION = 0.6
API_KEY = "playground-test-key"


def wait_for(driver, script: str, timeout: float = 30):
    """Waits until the JavaScript expression `script` is truthy in the page, and returns its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: d.execute_script(f"return {script}"))


def wait_for_analysis(driver, after_request: int) -> None:
    """Waits until an analysis newer than `after_request` was sent and the page has shown its answer."""
    wait_for(driver, f"window.playground.answered > {after_request} && "
                     "window.playground.answered === window.playground.request")


def canvas_pixels(driver, element_id: str) -> np.ndarray:
    """The grey values (red channel) of a canvas on the page, in [0, 1]. Its RGBA bytes come base64-encoded: the
    pad's 313,600 as an array of numbers took WebDriver 0.2-0.3 s, as a string 0.02 s."""
    width, height, data = driver.execute_script("""
        const c = document.getElementById(arguments[0]);
        const bytes = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let text = '';
        for (let i = 0; i < bytes.length; i += 8192) {
            text += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
        }
        return [c.width, c.height, btoa(text)];""", element_id)
    return np.frombuffer(base64.b64decode(data), np.uint8).astype(np.float32).reshape(height, width, 4)[..., 0] / 255.0


def canvas_png(driver, element_id: str) -> bytes:
    url = driver.execute_script("return document.getElementById(arguments[0]).toDataURL('image/png');", element_id)
    return base64.b64decode(url.split(",", 1)[1])


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def draw_seven(driver) -> None:
    """One stroke, as people write a 7: across the top, then down to the lower left. Real pointer events (a pen)."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    pad = driver.find_element("id", "pad")
    half = pad.size["width"] / 2
    path = [(-0.55, -0.6), (-0.2, -0.6), (0.15, -0.6), (0.5, -0.6), (0.35, -0.25), (0.2, 0.1), (0.05, 0.45),
            (-0.05, 0.7)]
    points = [np.asarray(p) for p in path]
    actions = ActionBuilder(driver, mouse=PointerInput(interaction.POINTER_PEN, "pen"), duration=10)
    actions.pointer_action.move_to(pad, int(points[0][0] * half), int(points[0][1] * half)).pointer_down()
    for start, end in zip(points, points[1:], strict=False):
        for t in np.linspace(0, 1, 5)[1:]:  # intermediate points, so the page sees many pointermove events
            x, y = (start + t * (end - start)) * half
            actions.pointer_action.move_to(pad, int(x), int(y))
    actions.pointer_action.pointer_up()
    actions.perform()


def test_page_says_the_service_is_not_ready_until_it_is(browser, server, publish, base_path):
    """Runs first, while the service has no model version to serve (its base path is empty until `publish`)."""
    assert httpx.get(f"{server}/readyz").status_code == 503
    browser.get(f"{server}/")
    message = wait_for(browser, "document.getElementById('status').textContent")
    assert message.startswith(f"The service is not ready yet: no model version under {base_path} yet")
    assert httpx.get(f"{server}/readyz").status_code == 503  # (the page said so while it was true)
    # The page waits, and starts by itself once the service is ready.
    publish()
    wait_for(browser, "window.playground.loads.samples >= 1", timeout=180)
    assert browser.find_element("id", "status").text == ""
    # The browser logs each 503 it was answered; nothing else went wrong.
    errors = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert all("/readyz" in error and "503" in error for error in errors), errors


@pytest.fixture(scope="module")
def page(browser, ready_server):
    browser.get(f"{ready_server}/")
    wait_for(browser, "window.playground && window.playground.loads.samples >= 1")
    return browser


def test_page_shows_the_model_that_answers(page, ready_server):
    model = httpx.get(f"{ready_server}/v1/model").json()
    wait_for(page, "document.getElementById('model-name').value !== '…'")
    assert page.find_element("id", "model-name").text == model["name"]
    assert page.find_element("id", "model-version").text == str(model["version"])


def test_drawn_seven_is_reconstructed_as_drawn(page, ready_server):
    draw_seven(page)
    wait_for(page, "window.playground.last !== null")
    drawing = canvas_png(page, "pad")
    reconstruction = canvas_pixels(page, "recon-probs")
    # The service reports the 28x28 input it used (include_input): compare with what the page shows of it.
    assert page.execute_script("return window.playground.last.inputs !== null"), "the API reported no inputs"
    seen = canvas_pixels(page, "input")
    assert seen.max() > 0.5, "the drawing did not reach the model"
    print(f"correlation of the reconstruction with the service's inputs: {correlation(reconstruction, seen):.3f}")
    assert correlation(reconstruction, seen) > MIN_CORRELATION
    # The page shows the decoder's probabilities as they came (to 8 bits), and the mode as their threshold.
    probs = np.asarray(page.execute_script("return window.playground.last.probs"), np.float32)
    np.testing.assert_allclose(reconstruction, probs, atol=1 / 255 + 1e-6)
    np.testing.assert_array_equal(canvas_pixels(page, "recon-mode"), (probs > 0.5).astype(np.float32))

    # The same PNG sent by this test gives the numbers the page shows.
    encoded = httpx.post(f"{ready_server}/v1/encode", params={"normalize": "true"},
                         files={"files": ("drawing.png", drawing, "image/png")}).json()
    mean, covariance = np.asarray(encoded["mean"][0]), np.asarray(encoded["covariance"][0])
    bars = page.find_elements("css selector", "#bars .latent-bar")
    assert len(bars) == 16
    shown_mean = [float(bar.get_attribute("data-mean")) for bar in bars]
    shown_std = [float(bar.get_attribute("data-std")) for bar in bars]
    np.testing.assert_allclose(shown_mean, mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(shown_std, np.sqrt(np.diag(covariance)), rtol=1e-4, atol=1e-5)
    # The decoder's mode as the service computes it (output=mode) is what the page shows.
    mode = httpx.post(f"{ready_server}/v1/reconstruct", params={"normalize": "true", "format": "json"},
                      files={"files": ("drawing.png", drawing, "image/png")}).json()["images"][0]
    np.testing.assert_array_equal(canvas_pixels(page, "recon-mode"), mode)
    # The heatmap: variances (the diagonal) are positive, so red; the largest entry in size is full red or blue.
    heatmap = np.asarray(page.execute_script(
        "return Array.from(document.getElementById('covariance').getContext('2d').getImageData(0, 0, 16, 16).data)"),
        np.uint8).reshape(16, 16, 4)
    diagonal = heatmap[np.arange(16), np.arange(16)]
    assert (diagonal[:, 0] == 255).all() and (diagonal[:, 1] < 255).all()
    strongest = np.unravel_index(np.abs(covariance).argmax(), covariance.shape)
    assert tuple(heatmap[strongest][:3]) in {(255, 0, 0), (0, 0, 255)}


def test_other_digits_do_not_pass_the_resemblance_check():
    """The correlation check can fail: the fixture 7 against every other fixture digit stays below the threshold."""
    def seen(path: Path) -> np.ndarray:
        return load_image(path.read_bytes(), path.name, limits=DecodeLimits(("PNG",), 10**6, 20), invert=None,
                          normalize=False)[0]

    others = [path for path in sorted(FIXTURES.glob("mnist_test_*.png")) if path != SEVEN]
    assert len(others) == 7
    assert max(correlation(seen(SEVEN), seen(path)) for path in others) < MIN_CORRELATION


def test_sliders_start_at_the_mean_and_decode_when_moved_with_the_keyboard(page, ready_server):
    from selenium.webdriver.common.keys import Keys

    sliders = page.find_elements("css selector", "#sliders input[type=range]")
    assert len(sliders) == 16
    mean = page.execute_script("return window.playground.last.mean")
    np.testing.assert_allclose([float(s.get_attribute("value")) for s in sliders], mean, atol=0.005 + 1e-6)
    wait_for(page, "!window.playground.decode.busy")
    before, loads = canvas_pixels(page, "decoded"), page.execute_script("return window.playground.loads.decoded")
    sliders[0].send_keys(*[Keys.ARROW_RIGHT] * 150)  # +1.5 in steps of 0.01
    wait_for(page, f"window.playground.loads.decoded > {loads} && !window.playground.decode.busy")
    values = [float(s.get_attribute("value")) for s in sliders]
    assert values[0] == pytest.approx(min(4, mean[0] + 1.5), abs=0.011)
    after = canvas_pixels(page, "decoded")
    assert np.abs(after - before).max() > 0.1, "moving z1 by 1.5 did not change the decoded digit"
    expected = httpx.post(f"{ready_server}/v1/decode", params={"format": "json"},
                          json={"latents": [values], "output": "probs"}).json()["images"][0]
    np.testing.assert_allclose(after, expected, atol=1 / 255 + 1e-6)


def show_seed(page, seed: int | None) -> np.ndarray:
    """Types a seed (or clicks "New seed" for None) and returns the grid drawn for it."""
    loads = page.execute_script("return window.playground.loads.samples")
    if seed is None:
        page.find_element("id", "new-seed").click()
    else:
        field = page.find_element("id", "seed")
        field.clear()
        field.send_keys(str(seed))
        page.find_element("css selector", "#seed-form button[type=submit]").click()
    wait_for(page, f"window.playground.loads.samples > {loads}")
    return canvas_pixels(page, "samples")


def test_samples_change_with_the_seed_and_not_without(page, ready_server):
    three = show_seed(page, 3)
    assert three.shape == (112, 112) and three.std() > 0.1
    np.testing.assert_array_equal(show_seed(page, 3), three)
    assert np.abs(show_seed(page, 4) - three).mean() > 0.05
    # The grid is the service's PNG, pixel for pixel.
    png = httpx.get(f"{ready_server}/v1/samples", params={"n": 16, "seed": 3, "format": "png"}).content
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png)), np.float32) / 255.0, three)
    fresh = show_seed(page, None)
    new_seed = int(page.find_element("id", "seed").get_attribute("value"))
    assert new_seed not in (3, 4)
    assert np.abs(fresh - three).mean() > 0.05


def test_uploaded_image_is_analysed(page, ready_server):
    request = page.execute_script("return window.playground.request")
    page.find_element("id", "upload").send_keys(str(SEVEN))
    wait_for_analysis(page, request)
    expected = httpx.post(f"{ready_server}/v1/encode", files={"files": (SEVEN.name, SEVEN.read_bytes(), "image/png")})
    np.testing.assert_allclose(page.execute_script("return window.playground.last.mean"),
                               expected.json()["mean"][0], rtol=1e-4, atol=1e-5)
    digit = np.asarray(Image.open(SEVEN), np.float32) / 255.0
    assert correlation(canvas_pixels(page, "recon-probs"), digit) > MIN_CORRELATION


def test_undo_removes_the_last_stroke(page):
    before = canvas_pixels(page, "pad")
    draw_seven(page)
    wait_for(page, "window.playground.strokes.length === 2")
    assert not np.array_equal(canvas_pixels(page, "pad"), before)
    page.find_element("id", "undo").click()
    np.testing.assert_array_equal(canvas_pixels(page, "pad"), before)
    wait_for(page, "window.playground.answered === window.playground.request")


def test_browser_console_has_no_errors(page):
    errors = [entry for entry in page.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == []


def test_rejected_upload_is_explained(page, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image at all")
    page.find_element("id", "upload").send_keys(str(bad))
    message = wait_for(page, "document.getElementById('status').textContent.includes('rejected') && "
                             "document.getElementById('status').textContent")
    assert "400" in message and "notes.png" in message and "not an image" in message
    # The only console errors are the browser's own lines about the 400 answers (reconstruct, encode, score).
    errors = [entry["message"] for entry in page.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors and all("400" in error for error in errors), errors


def test_every_control_is_labelled_and_reachable_with_tab(page):
    unnamed = page.execute_script("""
        return [...document.querySelectorAll('input, button, canvas[tabindex]')].filter((element) =>
            !(element.labels && element.labels.length) && !element.getAttribute('aria-label') &&
            !element.textContent.trim()).map((element) => element.outerHTML);""")
    assert unnamed == []
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    page.find_element("tag name", "h1").click()
    reached = set()
    for _ in range(60):
        ActionChains(page).send_keys(Keys.TAB).perform()
        reached.add(page.switch_to.active_element.get_attribute("id"))
    assert {"pad", "undo", "clear", "upload", "seed", "new-seed", "z0", "z15", "reset-sliders"} <= reached


def test_page_fits_a_phone_screen(page, tmp_path):
    page.set_window_size(390, 844)
    try:
        wait_for(page, "window.innerWidth <= 400")
        page.save_screenshot(str(tmp_path / "phone.png"))  # for a person looking into a failure
        overflow = page.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than a phone's screen"
        pad = page.find_element("id", "pad")
        assert pad.rect["x"] >= 0 and pad.rect["x"] + pad.rect["width"] <= 390
    finally:
        page.set_window_size(1280, 1100)


def test_screenshot(page, tmp_path):
    """Saves the page after drawing; VAE_PLAYGROUND_SCREENSHOT=docs/figures/playground.png writes the README's."""
    page.find_element("id", "clear").click()
    request = page.execute_script("return window.playground.request")
    draw_seven(page)
    wait_for_analysis(page, request)
    target = Path(os.environ.get("VAE_PLAYGROUND_SCREENSHOT", tmp_path / "playground.png"))
    target.parent.mkdir(parents=True, exist_ok=True)
    height = page.execute_script("return document.documentElement.scrollHeight")
    page.set_window_size(1280, height + 100)
    page.execute_script("window.scrollTo(0, 0)")
    assert page.save_screenshot(str(target))
    assert Image.open(target).size[0] >= 1000


def openapi_paths(url: str) -> set[str]:
    return set(httpx.get(f"{url}/openapi.json").json()["paths"])


def test_score_is_shown_when_the_service_scores(page, ready_server):
    """The likelihood panel shows the score route's answer for the drawing; without the route it stays hidden."""
    shown = page.find_element("id", "score").is_displayed()
    if "/v1/score" not in openapi_paths(ready_server):
        assert not shown
        assert page.execute_script("return window.playground.features.score") is False
        return
    assert shown
    shown_score = page.execute_script("return window.playground.last.score")
    params = {"normalize": "true", **({"seed": shown_score["seed"]} if "seed" in shown_score else {})}
    scored = httpx.post(f"{ready_server}/v1/score", params=params,
                        files={"files": ("drawing.png", canvas_png(page, "pad"), "image/png")}).json()
    assert shown_score == scored
    assert "NLL" in page.find_element("id", "score-text").text


def test_interpolation_strip_when_the_service_interpolates(page, ready_server):
    """Two prior samples as end points: the strip starts and ends at their decoded digits."""
    panel = page.find_element("id", "interp-panel")
    if "/v1/interpolate" not in openapi_paths(ready_server):
        assert not panel.is_displayed()
        return
    page.find_element("id", "sample-ab").click()
    wait_for(page, "window.playground.loads.interpolations >= 1")  # the strip's canvas is 280 wide from the start
    assert page.execute_script("return document.getElementById('interp-strip').width") == 280
    strip = canvas_pixels(page, "interp-strip")
    ends = page.execute_script("return [window.playground.ends.a.latent, window.playground.ends.b.latent]")
    decoded = httpx.post(f"{ready_server}/v1/decode", params={"format": "json"},
                         json={"latents": ends, "output": "probs"}).json()["images"]
    np.testing.assert_allclose(strip[:, :28], decoded[0], atol=2 / 255)
    np.testing.assert_allclose(strip[:, -28:], decoded[1], atol=2 / 255)


def test_page_asks_for_an_api_key_and_sends_it(browser, locked_server):
    """With VAE_API_KEYS set, the page (open itself) asks for a key on the first 401, keeps it for the tab and
    sends it; a wrong key is asked for again."""
    assert httpx.get(f"{locked_server}/v1/model").status_code == 401
    browser.get(f"{locked_server}/")
    wait_for(browser, "!document.getElementById('key-form').hidden")
    assert "API key" in browser.find_element("id", "status").text
    assert browser.switch_to.active_element.get_attribute("id") == "api-key"

    browser.find_element("id", "api-key").send_keys("wrong-key\n")
    wait_for(browser, "!document.getElementById('key-form').hidden")
    assert browser.execute_script("return window.playground.loads.samples") == 0

    browser.find_element("id", "api-key").send_keys(API_KEY + "\n")
    wait_for(browser, "window.playground.loads.samples >= 1")
    assert not browser.find_element("id", "key-form").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('vae-playground-api-key')") == API_KEY
    model = httpx.get(f"{locked_server}/v1/model", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    wait_for(browser, "document.getElementById('model-name').textContent !== '…'")  # /v1/model answers after samples
    assert browser.find_element("id", "model-name").text == model["name"]

    request = browser.execute_script("return window.playground.request")
    draw_seven(browser)
    wait_for_analysis(browser, request)
    assert len(browser.find_elements("css selector", "#bars .latent-bar")) == 16
    assert browser.find_element("id", "status").text == ""
