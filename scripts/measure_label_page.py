"""How fast can the labelling page go? Drives `lightmer label` in headless Chromium through a
batch, answering each window with one key press as soon as its face strip, camera clip and
audio have loaded, and reports the page's own wait per window (the time from the key press
to the next window being ready). A person also listens and decides: the report gives the
audio length per window too, so that the rate a person can reach is bounded from both sides.

    bash scripts/loopback.sh .venv/bin/python scripts/measure_label_page.py \
        --pool POOL --batch BATCH.json [--out DIR]

Writes DIR/label_page.json and DIR/label_page.png (a screenshot of the first window). The
answers go to DIR/answers.csv (the pool's own answers file is not touched).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from lightmer.labelling.server import load_batch

READY_JS = ('const f = document.getElementById("faces"), c = document.getElementById("clip"),'
            ' a = document.getElementById("audio");'
            'return document.body.dataset.ready === "1" && f.complete && f.naturalWidth > 0 &&'
            ' (c.hidden || (c.complete && c.naturalWidth > 0)) && a.readyState >= 1 &&'
            ' a.duration > 0;')


def _wait(condition, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise TimeoutError('the page did not get ready')


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--pool', type=Path, required=True)
    p.add_argument('--batch', type=Path, required=True)
    p.add_argument('--out', type=Path, default=Path('demo-out/label_page'))
    args = p.parse_args()

    # selenium: a test-only dependency, not needed to read this script's --help.
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains

    args.out.mkdir(parents=True, exist_ok=True)
    answers = args.out / 'answers.csv'
    if answers.exists():
        answers.unlink()
    items = load_batch(args.batch)['items']
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, '-m', 'lightmer.cli', 'label', '--pool',
                               str(args.pool), '--batch', str(args.batch), '--labels',
                               str(answers), '--port', str(port), '--who', 'measure'],
                              stdout=subprocess.DEVNULL)
    url = f'http://127.0.0.1:{port}/'

    def up() -> bool:
        try:
            return urllib.request.urlopen(url + 'api/state', timeout=5).status == 200
        except OSError:
            return False

    os.environ['SE_OFFLINE'] = 'true'
    options = webdriver.ChromeOptions()
    options.binary_location = '/usr/bin/chromium'
    for arg in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
                '--window-size=1100,900', '--no-first-run', '--disable-sync',
                '--disable-background-networking', '--disable-component-update',
                '--autoplay-policy=no-user-gesture-required'):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service('/usr/bin/chromedriver'), options=options)
    waits = []
    try:
        _wait(up)
        t0 = time.perf_counter()
        driver.get(url)
        _wait(lambda: driver.execute_script(READY_JS))
        first = time.perf_counter() - t0
        driver.save_screenshot(str(args.out / 'label_page.png'))
        for i in range(len(items)):
            t = time.perf_counter()
            ActionChains(driver).send_keys('s').perform()
            if i + 1 < len(items):
                _wait(lambda i=i: driver.execute_script(
                    'return document.body.dataset.index') == str(i + 1)
                    and driver.execute_script(READY_JS))
            else:
                _wait(lambda: driver.execute_script(
                    'return !document.getElementById("done").hidden'))
            waits.append(time.perf_counter() - t)
    finally:
        driver.quit()
        server.terminate()
        server.wait()
    audio_s = [it['audio_s'][1] - it['audio_s'][0] for it in items]
    w = np.array(waits)
    result = {
        'windows': len(items), 'first_window_s': first,
        'wait_per_window_s': {'median': float(np.median(w)), 'p95': float(np.percentile(w, 95)),
                              'max': float(w.max())},
        'page_ceiling_windows_per_min': 60.0 / float(w.mean()),
        'window_audio_s': float(np.mean(audio_s)),
        'played_audio_s': float(np.mean(audio_s)) + 2.0,
        'answers_written': sum(1 for _ in answers.open()) - 1,
    }
    (args.out / 'label_page.json').write_text(json.dumps(result, indent=2) + '\n')
    print(json.dumps(result, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
