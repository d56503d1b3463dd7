"""The labelling page in a real headless Chromium (Debian's chromium + chromedriver, driven by
Selenium) against a real `lightmer label` process: a batch answered with the keyboard, a
reload midway, the server killed and restarted, a second tab, a changed answer; the answers
file holds every answer once, in order, and the last one per window wins. A screenshot of the
page is saved (pytest's tmp dir and build/screenshots/)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from lightmer.active.answers import latest, read_answers
from lightmer.active.clean import pool_continuity
from lightmer.active.pool import Pool
from lightmer.active.query import MANIFEST_FORMAT, manifest_items
from lightmer.core.uncertainty import entropy_bits
from lightmer.labelling.server import load_batch
from polling import wait_until

# Slow tier (a real headless browser): not in `make test-fast`.
pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = '/usr/bin/chromium', '/usr/bin/chromedriver'
DEADLINE_S = 60
SCREENSHOTS = Path(__file__).resolve().parents[1] / 'build' / 'screenshots'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class _Server:
    """`lightmer label` as its own process, on a fixed port so that it can be restarted."""

    def __init__(self, pool: Path, batch: Path, answers: Path, port: int):
        self.cmd = [sys.executable, '-m', 'lightmer.cli', 'label', '--pool', str(pool),
                    '--batch', str(batch), '--labels', str(answers), '--port', str(port),
                    '--who', 'tester']
        self.url = f'http://127.0.0.1:{port}/'
        self.proc = None

    def _up(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + 'api/state', timeout=5) as r:
                return r.status == 200
        except OSError:
            assert self.proc.poll() is None, self.proc.stderr.read().decode()[-2000:]
            return False

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        wait_until(self._up, DEADLINE_S, 'the label server')

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def browser(monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), (
        'run scripts/setup.sh: it installs Debian chromium and chromium-driver')
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
                '--window-size=1100,900', '--no-first-run', '--disable-sync',
                '--disable-background-networking', '--disable-component-update',
                '--autoplay-policy=no-user-gesture-required'):
        options.add_argument(arg)
    monkeypatch.setenv('SE_OFFLINE', 'true')    # Selenium Manager: never look for a download
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _open(driver, url: str) -> None:
    driver.get(url)
    wait_until(lambda: driver.execute_script('return document.body.dataset.ready') == '1',
               DEADLINE_S, 'the page to load its batch')


def _text(driver, element_id: str) -> str:
    return driver.execute_script(f'return document.getElementById("{element_id}").textContent')


def _press(driver, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def _rows(path: Path) -> list[tuple[str, str]]:
    return [(a.window_id, a.label) for a in read_answers(path)]


def test_label_a_batch_with_the_keyboard(robot_pool, label_batch, browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    labels = load_batch(label_batch)['labels']
    ids = [it['window_id'] for it in load_batch(label_batch)['items']]
    n = len(ids)
    assert n == 6
    answers = tmp_path / 'answers.csv'
    server = _Server(robot_pool, label_batch, answers, _free_port())
    server.start()
    try:
        _open(browser, server.url)
        assert _text(browser, 'counter') == f'0 / {n}'
        # What the model saw and heard is on the page: faces, camera clip and audio loaded.
        wait_until(lambda: browser.execute_script(
            'const f = document.getElementById("faces"), c = document.getElementById("clip");'
            'return f.complete && f.naturalWidth > 0 && c.complete && c.naturalWidth > 0'),
            DEADLINE_S, 'the face strip and the camera clip')
        wait_until(lambda: browser.execute_script(
            'return document.getElementById("audio").duration > 3'), DEADLINE_S, 'the audio')
        bars = browser.execute_script('return document.querySelectorAll(".bar").length')
        assert bars == len(labels)

        _press(browser, '1')
        wait_until(lambda: _rows(answers) == [(ids[0], labels[0])], DEADLINE_S,
                   'answer 1 in the file')
        wait_until(lambda: _text(browser, 'position') == f'2 of {n}', DEADLINE_S, 'window 2')
        _press(browser, 's')
        wait_until(lambda: len(_rows(answers)) == 2, DEADLINE_S, 'answer 2 in the file')
        shot = tmp_path / 'label_page.png'
        browser.save_screenshot(str(shot))
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, SCREENSHOTS / 'label_page.png')

        # A reload continues at the first unanswered window.
        browser.refresh()
        wait_until(lambda: browser.execute_script('return document.body.dataset.ready') == '1',
                   DEADLINE_S, 'the reloaded page')
        assert _text(browser, 'counter') == f'2 / {n}'
        assert _text(browser, 'position') == f'3 of {n}'
        _press(browser, 'u')
        wait_until(lambda: len(_rows(answers)) == 3, DEADLINE_S, 'answer 3 in the file')

        # The server is killed and started again: nothing is lost, the page continues.
        server.kill()
        server.start()
        _open(browser, server.url)
        assert _text(browser, 'counter') == f'3 / {n}'
        assert _text(browser, 'position') == f'4 of {n}'

        # Back one window and change its answer: the last answer wins, the history stays.
        _press(browser, Keys.ARROW_LEFT)
        wait_until(lambda: _text(browser, 'position') == f'3 of {n}', DEADLINE_S,
                   'back to window 3')
        assert _text(browser, 'current') == 'answered: unsure'
        _press(browser, '2')
        wait_until(lambda: len(_rows(answers)) == 4, DEADLINE_S, 'the changed answer in the file')
        wait_until(lambda: _text(browser, 'position') == f'4 of {n}', DEADLINE_S, 'on to window 4')

        # A second tab answers window 4; the first tab, not knowing, gives the same answer:
        # written once.
        first = browser.current_window_handle
        browser.switch_to.new_window('tab')
        _open(browser, server.url)
        assert _text(browser, 'position') == f'4 of {n}'
        _press(browser, '3')
        wait_until(lambda: len(_rows(answers)) == 5, DEADLINE_S, 'the second tab\'s answer')
        browser.switch_to.window(first)
        _press(browser, '3')
        wait_until(lambda: _text(browser, 'position') == f'5 of {n}', DEADLINE_S,
                   'window 5 in the first tab')
        _press(browser, '4')
        wait_until(lambda: _text(browser, 'position') == f'6 of {n}', DEADLINE_S, 'window 6')
        _press(browser, '5')
        wait_until(lambda: browser.execute_script(
            'return !document.getElementById("done").hidden'), DEADLINE_S,
            'the all-answered screen')
        assert _text(browser, 'counter') == f'{n} / {n}'
        rate = _text(browser, 'rate')
        assert float(rate) > 0, rate
    finally:
        server.kill()

    assert _rows(answers) == [(ids[0], labels[0]), (ids[1], 'skip'), (ids[2], 'unsure'),
                              (ids[2], labels[1]), (ids[3], labels[2]), (ids[4], labels[3]),
                              (ids[5], labels[4])]
    assert {w: a.label for w, a in latest(read_answers(answers)).items()} == {
        ids[0]: labels[0], ids[1]: 'skip', ids[2]: labels[1], ids[3]: labels[2],
        ids[4]: labels[3], ids[5]: labels[4]}
    assert {a.who for a in read_answers(answers)} == {'tester'}
    assert shot.stat().st_size > 10_000


FOREIGN_PAGE = """<!doctype html><html><head><title>waiting</title></head><body>
<iframe name="sink" id="sink"></iframe>
<form id="form" method="post" enctype="text/plain" target="sink" action="TARGET">
<input name='{"window_id": "WID", "label": "LABEL", "x": "' value='"}'></form>
<script>
const body = JSON.stringify({window_id: 'WID', label: 'LABEL'});
document.getElementById('sink').onload = () => { document.body.dataset.form = 'sent'; };
Promise.allSettled([
  fetch('TARGET', {method: 'POST', mode: 'no-cors', body: body}),
  fetch('TARGET', {method: 'POST', mode: 'no-cors', body: body, referrerPolicy: 'unsafe-url',
                   headers: {'Content-Type': 'text/plain'}}),
]).then(r => { document.title = r.map(x => x.status).join(','); });
document.getElementById('form').submit();
</script></body></html>"""


def _foreign_site(page: bytes) -> ThreadingHTTPServer:
    """Another origin (another port) serving one page, as an attacker's site would."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):     # noqa: N802 (http.server's naming)
            self.send_response(200)
            self.send_header('Content-Type', 'text/html')
            self.send_header('Content-Length', str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    site = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    return site


def test_a_foreign_page_cannot_write_answers(robot_pool, label_batch, browser, tmp_path):
    """A page of another origin posts answers to the labelling page the ways a browser lets
    it (fetch without CORS, with and without the full Referer, and a text/plain form): the
    requests reach the server, and nothing is written."""
    batch = load_batch(label_batch)
    answers = tmp_path / 'answers.csv'
    server = _Server(robot_pool, label_batch, answers, _free_port())
    page = (FOREIGN_PAGE.replace('TARGET', server.url + 'api/answer')
            .replace('WID', batch['items'][0]['window_id'])
            .replace('LABEL', batch['labels'][0]))
    site = _foreign_site(page.encode())
    server.start()
    try:
        browser.get(f'http://127.0.0.1:{site.server_port}/')
        wait_until(lambda: browser.title == 'fulfilled,fulfilled', DEADLINE_S,
                   'both fetches answered by the label server', describe=lambda: browser.title)
        wait_until(lambda: browser.execute_script('return document.body.dataset.form'),
                   DEADLINE_S, 'the form post answered')
        # The same answer from the page itself is written: the server was listening.
        assert not answers.exists()
        _open(browser, server.url)
        _press(browser, '1')
        wait_until(lambda: len(_rows(answers)) == 1, DEADLINE_S, 'the page\'s own answer')
    finally:
        server.kill()
        site.shutdown()
        site.server_close()


def test_the_page_shows_when_a_window_spans_a_pause(robot_pool, browser, tmp_path):
    """make-bag lays clips 1 s apart in silence: windows across a gap span a pause. A batch
    of two such windows and two clean ones; the page marks exactly the first two."""
    from selenium.webdriver.common.keys import Keys

    pool = Pool(robot_pool)
    table = pool.table
    found = pool_continuity(pool)
    paused = np.flatnonzero(found.pause)[:2].tolist()
    clean = np.flatnonzero(found.clean)[:2].tolist()
    assert len(paused) == 2 and len(clean) == 2
    chosen = paused + clean
    scores = {'score': entropy_bits(table.probs), 'entropy_bits': entropy_bits(table.probs),
              'margin': np.zeros(len(table.ids))}
    labels = tuple(pool.recording(table.rec_ids[0])['labels'])
    batch = tmp_path / 'batch.json'
    batch.write_text(json.dumps({'format': MANIFEST_FORMAT, 'labels': list(labels),
                                 'items': manifest_items(pool, chosen, table.probs, scores,
                                                         labels)}))
    server = _Server(robot_pool, batch, tmp_path / 'answers.csv', _free_port())
    server.start()
    try:
        _open(browser, server.url)
        shown = []
        for i in range(len(chosen)):
            wait_until(lambda i=i: _text(browser, 'position') == f'{i + 1} of 4', DEADLINE_S,
                       f'window {i + 1}')
            shown.append(_text(browser, 'continuity'))
            _press(browser, Keys.ARROW_RIGHT)
    finally:
        server.kill()
    assert ['spans a pause' in s for s in shown] == [True, True, False, False], shown
    assert all(s == 'one continuous run: no pause inside' for s in shown[2:]), shown
