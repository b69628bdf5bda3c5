"""The upload page end to end: waitress serving a temporary registry, driven by headless Chromium.

Needs Debian's ``chromium`` (``.ci/run`` installs it) and the ``playwright`` package (the ``test`` extra); no
browser is downloaded. A screenshot of the final page is saved to ``out/test-artifacts/browser.png``.
"""

import re
import shutil
import threading
from pathlib import Path

import pytest

from enroll.server import create_app, make_server

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "out" / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 # a synthetic microphone (a beep), granted without a prompt, for the recording path
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)")]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[test])")
expect = sync_api.expect


@pytest.fixture(scope="module")
def base_url(encoder, tmp_path_factory):
    # one fixed accept score: the page's behaviour, not the calibration (tests/test_calibration.py), is tested here
    app = create_app(tmp_path_factory.mktemp("reg"), encoder=encoder, threshold=0.5)
    server = make_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.effective_port}/"
    server.close()
    server.task_dispatcher.shutdown()
    app.extensions["enroll"].registries.close()


@pytest.fixture(scope="module")
def page():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 1200})
        page.set_default_timeout(30_000)
        page.on("dialog", lambda dialog: dialog.accept())  # the delete confirmation
        yield page
        browser.close()


@pytest.fixture(scope="module")
def clips(clip_rows):
    out = {}
    for r in clip_rows:
        out.setdefault(r["speaker"], []).append(r["path"])
    return out


def enroll(page, name, paths):
    page.fill("#enroll-name", name)
    page.set_input_files("#enroll-files", paths)
    page.click("#enroll-submit")
    expect(page.locator("#enroll-status")).to_contain_text(f"Enrolled {name}: {len(paths)} clip(s)")


def test_enroll_identify_record_and_delete_in_the_page(base_url, page, clips, tmp_path):
    page.goto(base_url)
    expect(page.locator("#health")).to_contain_text("0 speaker(s) enrolled")
    expect(page.locator("#speakers-empty")).to_be_visible()

    enroll(page, "ada", clips["0036"][:3])
    enroll(page, "bob", clips["1027"][:3])
    rows = page.locator("#speakers tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_have_attribute("data-name", "ada")
    expect(rows.nth(0).locator("td").nth(1)).to_have_text("3")

    page.set_input_files("#identify-file", clips["0036"][4])
    page.click("#identify-submit")
    matches = page.locator("#matches li")
    expect(matches).to_have_count(2)
    expect(matches.nth(0).locator(".match-name")).to_have_text("ada")
    expect(matches.nth(1).locator(".match-name")).to_have_text("bob")
    expect(matches.nth(0)).to_have_class("match accepted")
    assert float(matches.nth(0).get_attribute("data-score")) > float(matches.nth(1).get_attribute("data-score"))
    expect(page.locator("#identify-status")).to_have_text(
        f"Best match: ada (score {float(matches.nth(0).get_attribute('data-score')):.3f}).")

    def percent(locator, prop):
        return float(re.search(rf"{prop}: ([\d.]+)%", locator.get_attribute("style")).group(1))

    mark = percent(matches.nth(0).locator(".threshold"), "left")
    assert 0 < mark < 100  # the threshold mark lies inside the bar, whatever the scoring's scale
    assert percent(matches.nth(0).locator(".fill"), "width") > mark > percent(matches.nth(1).locator(".fill"), "width")
    best = float(matches.nth(0).get_attribute("data-score"))  # one scale for the score and the threshold
    assert percent(matches.nth(0).locator(".fill"), "width") / mark == pytest.approx(best / 0.5, rel=0.01)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = tmp_path / "browser.png"
    page.screenshot(path=str(shot), full_page=True)
    shutil.copy(shot, ARTIFACTS / "browser.png")
    assert shot.stat().st_size > 10_000

    # Recording: the fake microphone's audio is converted to WAV in the page and accepted by the server.
    page.click("#identify-record")
    expect(page.locator("#identify-record")).to_have_attribute("aria-pressed", "true")
    page.wait_for_timeout(1500)
    page.click("#identify-record")
    expect(page.locator("#identify-recordings li")).to_have_count(1)
    expect(page.locator("#identify-recordings li")).to_contain_text("recording-1.wav")
    with page.expect_response(lambda r: r.url.endswith("/identify")) as response:
        page.click("#identify-submit")
    assert response.value.status == 200  # the server decoded it: MediaRecorder's webm/opus would be a 400
    assert [m["name"] for m in response.value.json()["matches"]] in (["ada", "bob"], ["bob", "ada"])
    expect(page.locator("#identify-status")).to_have_text(re.compile(r"^(Best match: |Unknown speaker: )"))
    expect(matches).to_have_count(2)

    # A bad file shows the server's message.
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    page.set_input_files("#identify-file", str(bad))
    page.click("#identify-submit")
    expect(page.locator("#identify-status")).to_contain_text("could not be decoded as audio")
    expect(page.locator("#identify-status")).to_have_class("status error")

    page.get_by_role("button", name="Delete bob").click()
    expect(rows).to_have_count(1)
    expect(page.locator("#speakers-status")).to_have_text("Deleted bob.")
    expect(page.locator("#health")).to_contain_text("1 speaker(s) enrolled")
