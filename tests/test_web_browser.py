"""The page in a real browser: headless Chromium (Debian's `chromium`, installed by `make test`)
driven by Playwright, the way a user works: open, upload, preview, run, wait, download."""

import base64
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from unflicker import io
from unflicker.metrics import flicker_index
from web_server import running_server, write_clip

CHROMIUM = os.environ.get("UNFLICKER_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMING = os.environ.get("UNFLICKER_WEB_TIMING")
"""Set: also time the default (neural) preview and run of a 90-frame 480p clip in the page."""
SCREENSHOT = os.environ.get("UNFLICKER_WEB_SCREENSHOT")
"""The timed test saves its finished page here too (how docs/web.png is made)."""


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium, or set UNFLICKER_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("serve") / "work") as server:
        yield server


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip") / "flickering.mp4")


def frames_of(path):
    return [io.to_float(f.image) for f in io.read_frames(path)]


def open_page(browser, server, width=1280):
    """A new browser session on the page; every URL it asks for is kept in `page.requested`."""
    context = browser.new_context(viewport={"width": width, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.requested = []
    page.on("request", lambda request: page.requested.append(request.url))
    page.goto(server.url)
    return context, page


def upload(page, path):
    page.set_input_files("#file", str(path))
    page.wait_for_function("() => document.querySelectorAll('#inplot polyline').length === 3")


def choose(page, method, preset=None):
    page.select_option("#method", method)
    if preset:
        page.select_option("#preset", preset)


def run_and_wait(page, timeout_s):
    """Click Run; the newest run card once it is done (its time as the page shows it)."""
    count = page.locator("#jobs .job").count()
    page.click("#run")
    card = page.locator("#jobs .job").first
    page.wait_for_function(f"() => document.querySelectorAll('#jobs .job').length === {count + 1}")
    page.wait_for_function("() => !['queued', 'running'].includes(document.querySelector('#jobs .job').dataset.state)",
                           timeout=timeout_s * 1000)
    assert card.get_attribute("data-state") == "done", card.locator(".error").text_content()
    return card


def test_upload_preview_run_download(browser, server, clip, tmp_path):
    context, page = open_page(browser, server)
    assert page.title() == "unflicker"
    upload(page, clip)
    assert "12 frames, 96x64, 12 fps" in page.text_content("#facts")
    choose(page, "classical")
    assert page.is_disabled("#preset") and page.is_disabled("#keepslow")
    page.eval_on_selector("#frame", "e => { e.value = 4; e.dispatchEvent(new Event('input')); }")
    assert page.text_content("#frame-value") == "4 of 11"

    start = time.monotonic()
    page.click("#preview")
    preview = page.locator("#previews .job[data-state=done]")
    preview.wait_for()
    preview_seconds = time.monotonic() - start
    assert "around frame 4" in preview.text_content()
    for image in ("img.before", "img.after"):
        page.wait_for_function(f"() => document.querySelector('#previews {image}').naturalWidth === 96")

    start = time.monotonic()
    card = run_and_wait(page, 60)
    run_seconds = time.monotonic() - start
    shown = card.locator(".flicker")
    before, after = float(shown.get_attribute("data-before")), float(shown.get_attribute("data-after"))
    assert after < 0.3 * before and "12 frames" in shown.text_content()
    # The player plays the before | after video the job wrote, and the plot loads.
    page.wait_for_function("() => { const v = document.querySelector('#jobs video.player');"
                           " return v.readyState >= 1 && v.videoWidth === 192; }")
    page.wait_for_function("() => document.querySelector('#jobs img.plot').naturalWidth > 0")
    with page.expect_download() as download:
        card.locator("a.download").click()
    assert download.value.suggested_filename == "flickering-unflicker.mp4"
    output = tmp_path / download.value.suggested_filename
    download.value.save_as(output)
    out = frames_of(output)
    assert len(out) == 12
    assert flicker_index(out)["luma"] < 0.3 * flicker_index(frames_of(clip))["luma"]

    # Every control and progress bar has a name a screen reader can say; Cancel says which job it stops.
    tree = page.locator("main").aria_snapshot()
    assert "- progressbar\n" not in tree + "\n" and '- progressbar "Making the comparison"' in tree
    assert card.locator(".cancel").get_attribute("aria-label") == "Cancel: flickering.mp4"

    page.screenshot(path=str(tmp_path / "web.png"), full_page=True)
    assert page.requested and all(url.startswith(server.url) for url in page.requested)  # nothing from elsewhere
    print(f"\npreview {preview_seconds:.1f} s, classical run {run_seconds:.1f} s in the page")

    # A reload keeps the session's upload and jobs; another browser session sees none of them.
    page.reload()
    page.locator("#jobs .job[data-state=done] .flicker").wait_for()
    assert "12 frames" in page.text_content("#facts")
    other, other_page = open_page(browser, server)
    other_page.wait_for_function("() => document.querySelector('#limits').textContent !== ''")
    assert other_page.locator(".job").count() == 0 and other_page.text_content("#facts") == ""
    other.close()
    context.close()


def test_the_bit_depth_is_chosen_with_the_format_and_the_download_has_it(browser, server, clip, tmp_path):
    """The page had no bit depth: it offers the depths the chosen format holds (the others greyed out), and the
    downloaded result has the depth chosen."""
    context, page = open_page(browser, server)
    upload(page, clip)
    choose(page, "classical")
    assert page.input_value("#bitdepth") == ""  # the input's, as `unflicker run` without --bit-depth

    def offered():
        return page.eval_on_selector_all("#bitdepth option", "os => os.filter(o => !o.disabled).map(o => o.value)")

    assert offered() == ["", "8", "10"]  # MP4 (H.264)
    page.select_option("#format", "mov-prores")
    assert offered() == ["", "10"] and "MOV (ProRes) can hold 10 bits" in page.text_content("#bitdepth-hint")
    page.select_option("#format", "mkv")
    page.select_option("#bitdepth", "16")
    page.select_option("#format", "mp4")  # 16 bits it cannot hold: back to the input's depth
    assert page.input_value("#bitdepth") == ""
    page.select_option("#format", "mkv")
    page.select_option("#bitdepth", "16")
    card = run_and_wait(page, 60)
    assert "MKV FFV1, 16-bit" in card.locator(".head").text_content()
    link = card.locator("a.download")
    assert link.get_attribute("data-bits") == "16" and link.text_content() == "Download the result (MKV, FFV1, 16-bit)"
    with page.expect_download() as download:
        link.click()
    assert download.value.suggested_filename == "flickering-unflicker.mkv"
    output = tmp_path / download.value.suggested_filename
    download.value.save_as(output)
    info = io.probe(output)
    assert (info.codec, info.sample_bits, info.frame_count) == ("ffv1", 16, 12)
    assert '- combobox "Bit depth"' in page.locator("main").aria_snapshot()  # its label names it
    context.close()


def test_bad_upload_shows_a_message_and_the_page_keeps_working(browser, server, clip, tmp_path):
    context, page = open_page(browser, server)
    notes = tmp_path / "holiday.mp4"
    notes.write_text("this is a shopping list, not a video\n")
    page.set_input_files("#file", str(notes))
    message = page.locator("#message")
    message.wait_for()
    assert message.text_content().startswith("holiday.mp4 cannot be used: not a video")
    assert "Traceback" not in page.content()
    upload(page, clip)  # the server still serves, the same page still works
    assert page.is_enabled("#run") and page.is_hidden("#uploads-field")
    # Several files at once: each is uploaded, and the page offers a choice between them.
    second = write_clip(tmp_path / "second.mp4", n=6)
    page.set_input_files("#file", [str(second), str(clip)])
    page.wait_for_function("() => document.querySelectorAll('#uploads option').length === 3")
    page.select_option("#uploads", label="second.mp4")
    page.wait_for_function("() => document.querySelector('#facts').textContent.includes('6 frames')")
    assert page.text_content("#frame-value") == "2 of 5"
    context.close()


def test_a_video_can_be_chosen_with_the_keyboard_alone(browser, server, clip):
    """The file chooser is the first stop of Tab (it was hidden, so only a mouse could choose a video), and the
    focused control is the one that takes the file. (Whether Space or Enter then opens the system's dialog is
    the browser's: headless Chromium does it only now and then, so the file is given to the focused input.)"""
    context, page = open_page(browser, server)
    page.wait_for_function("() => document.querySelector('#limits').textContent !== ''")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "file"
    page.locator("*:focus").set_input_files(str(clip))
    page.wait_for_function("() => document.querySelectorAll('#inplot polyline').length === 3")
    assert "12 frames, 96x64" in page.text_content("#facts")
    context.close()


def test_a_server_that_does_not_answer_is_said_in_words(browser, server):
    """The page showed the browser's "Failed to fetch" while its server was away."""
    context, page = open_page(browser, server)
    page.wait_for_function("() => document.querySelector('#limits').textContent !== ''")
    page.route("**/api/state*", lambda route: route.abort())  # as when the server is stopped
    page.locator("#message").wait_for()
    assert page.text_content("#message") == ("the server does not answer: is unflicker serve still running "
                                             "on this computer?")
    page.unroute("**/api/state*")
    page.locator("#message").wait_for(state="hidden")
    context.close()

def test_the_brightness_plot_of_a_long_video_is_drawn(browser, server):
    """10 minutes of 120 fps slow motion (72000 frames): the plot's min/max over spread arguments overflowed
    the stack, and the exception stopped every later refresh of the page, its jobs included."""
    context, page = open_page(browser, server)
    page.wait_for_function("() => document.querySelector('#limits').textContent !== ''")
    drawn = page.evaluate("""() => {
        const means = Array.from({length: 72000}, (_, t) => [0.4, 0.5, 0.6 + 0.1 * (t % 2)]);
        drawPlot(document.getElementById('inplot'), means, 100, false);
        return document.querySelectorAll('#inplot polyline').length; }""")
    assert drawn == 3
    context.close()

def test_a_dropped_folder_is_named_and_the_videos_dropped_with_it_are_uploaded(browser, server, clip):
    """A folder of frames dropped on the page was sent as an empty file: "the upload failed" or "is empty"."""
    context, page = open_page(browser, server)
    page.wait_for_function("() => document.querySelector('#limits').textContent !== ''")
    page.evaluate("""(video) => {
        const bytes = Uint8Array.from(atob(video), (c) => c.charCodeAt(0));
        const dropped = new DataTransfer();
        dropped.items.add(new File([], "scans"));  // what the browser gives for a folder, whose entry says so
        dropped.items.add(new File([bytes], "flickering.mp4", {type: "video/mp4"}));
        DataTransferItem.prototype.webkitGetAsEntry = function () {
          const name = this.getAsFile().name;
          return {isDirectory: name === "scans", isFile: name !== "scans", name}; };
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dropped, bubbles: true,
                                                                             cancelable: true})); }""",
                  base64.b64encode(clip.read_bytes()).decode())
    page.wait_for_function("() => document.querySelectorAll('#inplot polyline').length === 3")
    assert page.text_content("#message") == ("scans: a folder cannot be uploaded; put its frames in a zip and "
                                             "drop the zip")
    assert "12 frames, 96x64" in page.text_content("#facts")
    context.close()

@pytest.mark.parametrize("width", [1200, 820, 700])
def test_the_page_fits_its_window_without_scrolling_sideways(browser, server, clip, tmp_path, width):
    """Long option texts, a camera's long file name and the progress rows of a finished job all fit."""
    context, page = open_page(browser, server, width)
    named = tmp_path / "A001_C003_20261204_R1PX_EXPOSURE_BRACKET_TAKE_07.mp4"
    shutil.copyfile(clip, named)
    upload(page, named)

    def overflow():
        return page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")

    assert overflow() <= 0, f"the page is {overflow()} px wider than a {width} px window"
    choose(page, "classical")
    page.click("#preview")
    page.locator("#previews .job[data-state=done]").wait_for(timeout=120_000)
    run_and_wait(page, 120)
    assert overflow() <= 0, f"with finished jobs, the page is {overflow()} px wider than a {width} px window"
    context.close()


def test_a_job_the_server_no_longer_keeps_leaves_the_page(browser, tmp_path, clip):
    """Retention removed a finished run's files, yet its card stayed with links that opened a JSON error."""
    with running_server(tmp_path / "work", "--keep", "2") as server:
        context, page = open_page(browser, server)
        upload(page, clip)
        choose(page, "classical")
        run_and_wait(page, 60)
        for n in (4, 5):  # two newer uploads: the run and its upload are the oldest of the kept items
            upload(page, write_clip(tmp_path / f"clip{n}.mp4", n=n))
            page.wait_for_function(f"() => document.querySelector('#facts').textContent.includes('{n} frames')")
        page.wait_for_function("() => document.querySelectorAll('#jobs .job').length === 0")
        assert page.locator("a.download").count() == 0
        context.close()

def test_neural_fast_run_and_cancel(browser, server, clip):
    context, page = open_page(browser, server)
    upload(page, clip)
    choose(page, "classical")
    assert page.locator("#carrytexture").is_disabled()  # the neural method's, as --carry-texture
    choose(page, "neural", "fast")
    page.check("#carrytexture")
    start = time.monotonic()
    card = run_and_wait(page, 90)
    print(f"\nneural fast run {time.monotonic() - start:.1f} s in the page")
    assert "texture carried" in card.text_content()  # the run's settings, as the server took them
    stages = [s.text_content() for s in card.locator(".stage > span:first-child").all()]
    assert len(stages) >= 2 and stages[-1] == "Making the comparison", stages
    bars = card.locator(".stage progress").all()
    assert all(b.get_attribute("value") == b.get_attribute("max") for b in bars)
    shown = card.locator(".flicker")
    assert float(shown.get_attribute("data-after")) < 0.5 * float(shown.get_attribute("data-before"))

    choose(page, "neural", "paper")  # minutes on a CPU: cancelled long before it ends
    page.click("#run")
    running = page.locator("#jobs .job[data-state=running]")
    running.wait_for()
    running.locator(".cancel").click()
    page.locator("#jobs .job[data-state=cancelled]").wait_for(timeout=15_000)
    assert page.locator("#jobs .job[data-state=cancelled] .cancel").is_hidden()
    context.close()


def test_a_preview_still_running_stays_in_sight_when_another_is_asked_for(browser, server, clip):
    """Only the newest preview was shown: a second Preview hid the first while it still ran, with its Cancel,
    and the second waited for it in sight of nothing."""
    context, page = open_page(browser, server)
    upload(page, clip)
    choose(page, "neural", "paper")  # minutes on a CPU: cancelled long before it ends
    page.click("#preview")
    first = page.locator("#previews .job[data-state=running]")
    first.wait_for()
    choose(page, "classical")
    page.click("#preview")
    page.wait_for_function("() => document.querySelectorAll('#previews .job').length === 2")
    assert first.is_visible() and first.locator(".cancel").is_visible()
    first.locator(".cancel").click()
    page.locator("#previews .job[data-state=done]").wait_for(timeout=60_000)
    page.wait_for_function("() => document.querySelectorAll('#previews .job[data-state=cancelled]').length === 1")
    assert page.locator("#previews .job[data-state=cancelled]").is_hidden()  # an older finished one goes
    context.close()

@pytest.mark.skipif(not TIMING, reason="minutes on a CPU: set UNFLICKER_WEB_TIMING=1 to time a 480p job")
def test_time_a_480p_job_with_the_defaults(browser, server, tmp_path):
    import av
    from skimage import data

    from unflicker import synth

    clean = synth.camera_move_clip(data.stereo_motorcycle()[0], 90, (480, 854), motion="pan", seed=0)
    path = tmp_path / "motorcycle.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt, stream.options = 854, 480, "yuv420p", {"crf": "14"}
        for frame in synth.add_flicker(clean, kind="mixed", strength=1.0, seed=0):
            image = av.VideoFrame.from_ndarray((np.clip(frame, 0, 1) * 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    context, page = open_page(browser, server)
    start = time.monotonic()
    upload(page, path)
    shown = time.monotonic() - start
    page.eval_on_selector("#frame", "e => { e.value = 45; e.dispatchEvent(new Event('input')); }")
    start = time.monotonic()
    page.click("#preview")
    page.locator("#previews .job[data-state=done]").wait_for(timeout=600_000)
    preview_seconds = time.monotonic() - start
    start = time.monotonic()
    card = run_and_wait(page, 600)
    run_seconds = time.monotonic() - start
    flicker = card.locator(".flicker")
    assert float(flicker.get_attribute("data-after")) < float(flicker.get_attribute("data-before"))
    page.wait_for_function("() => document.querySelector('#jobs img.plot').naturalWidth > 0")
    page.screenshot(path=str(tmp_path / "web.png"), full_page=True)
    if SCREENSHOT:
        shutil.copyfile(tmp_path / "web.png", SCREENSHOT)
    print(f"\n90 frames 854x480, defaults: facts and plot {shown:.1f} s, preview {preview_seconds:.1f} s, "
          f"run {run_seconds:.1f} s in the page; {flicker.text_content()}")
    context.close()


def test_a_double_click_on_run_is_one_run(browser, server, clip):
    """The second click of a double-click queued a second, identical run."""
    context, page = open_page(browser, server)
    upload(page, clip)
    choose(page, "classical")
    page.dblclick("#run")
    page.locator("#jobs .job").first.wait_for()
    page.wait_for_function("() => !['queued', 'running'].includes(document.querySelector('#jobs .job').dataset.state)",
                           timeout=60_000)
    assert page.locator("#jobs .job").count() == 1
    context.close()



@pytest.mark.parametrize("width", [1280, 390])
def test_a_job_card_keeps_its_name_and_its_cancel_button_readable(browser, server, width):
    """A waiting preview's card broke its Cancel button into "Canc" and "el" (1280 px window), and in a phone's
    390 px one into a letter a line, its long name squeezed beside it into a column a few letters wide."""
    context, page = open_page(browser, server, width)
    page.wait_for_function("() => document.querySelector('#limits').textContent !== ''")
    sizes = page.evaluate("""() => {
        renderJob({id: "0123456789abcdef", kind: "preview", upload_name: "A001_C003_20261204_R1PX_TAKE_07.mp4",
                   frame: 14, settings: {method: "neural", preset: "paper", kind: "film", carry_texture: true,
                   keep_slow: "", strength: 1, format: "mp4", bit_depth: ""}, state: "running", ahead: null,
                   seconds: 95, stages: [], message: "", result: {}, files: {}});
        const card = document.querySelector('#previews .job');  // measured before the next poll removes it
        const size = (node) => node.getBoundingClientRect();
        return {cancel: size(card.querySelector(".cancel")).height, card: size(card).width,
                name: size(card.querySelector(".head > span")).width,
                button: size(document.getElementById("preview")).height}; }""")
    assert sizes["cancel"] <= sizes["button"] + 1, f"Cancel is {sizes['cancel']} px high, a one-line button " \
                                                   f"{sizes['button']} px"
    assert sizes["name"] >= 0.4 * sizes["card"], f"the name has {sizes['name']} px of a {sizes['card']} px card"
    context.close()


def test_the_page_loads_without_an_error_in_the_browsers_console(browser, server):
    """Every load of the page logged "Failed to load resource: ... 404" for the browser's /favicon.ico."""
    context = browser.new_context()
    page = context.new_page()
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(server.url)
    page.wait_for_function("() => document.querySelector('#limits').textContent !== ''")
    page.wait_for_timeout(500)  # the icon is asked for after the page's load
    assert errors == []
    context.close()


def test_several_videos_chosen_in_a_new_browser_session_are_all_kept(browser, server, clip, tmp_path):
    """A new browser's first files, chosen several at once, were sent at once: each upload started a session of
    its own, and the page kept only the one whose session cookie came last, the others gone without a word."""
    context, page = open_page(browser, server)
    page.wait_for_function("() => document.querySelector('#limits').textContent !== ''")
    others = [write_clip(tmp_path / f"clip{n}.mp4", n=n) for n in (4, 5)]
    page.set_input_files("#file", [str(clip), *map(str, others)])
    page.wait_for_function("() => document.querySelectorAll('#uploads option').length === 3", timeout=20_000)
    assert sorted(page.eval_on_selector_all("#uploads option", "os => os.map(o => o.textContent)")) == \
        ["clip4.mp4", "clip5.mp4", "flickering.mp4"]
    context.close()
