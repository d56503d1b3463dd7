"""`lightmer label`'s server over real HTTP on loopback: bad requests get a 4xx with a message
and write nothing; a good answer is written once; the page loads nothing from elsewhere."""
from __future__ import annotations

import http.client
import json
import re
import threading

import pytest

from lightmer.active.answers import read_answers
from lightmer.labelling.server import CSP, LabelSession, make_server


@pytest.fixture
def server(robot_pool, label_batch, tmp_path):
    session = LabelSession(robot_pool, label_batch, tmp_path / 'answers.csv', 'tester')
    srv = make_server(session, '127.0.0.1', 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, session
    srv.shutdown()
    srv.server_close()


def _request(srv, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection('127.0.0.1', srv.server_port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        conn.close()


def _answer(srv, obj, **headers):
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return _request(srv, 'POST', '/api/answer', body,
                    {'Content-Type': 'application/json', **headers})


def test_bad_requests_get_4xx_and_write_nothing(server):
    srv, session = server
    wid, label = session.ids[0], session.labels[0]
    bad = [
        (_answer(srv, {'window_id': 'nope:1', 'label': label}), 404, 'not in this batch'),
        (_answer(srv, {'window_id': wid, 'label': 'ecstatic'}), 400, 'is not one of'),
        (_answer(srv, {'window_id': wid}), 400, 'is not one of'),
        (_answer(srv, ['a', 'list']), 400, 'JSON object'),
        (_answer(srv, b'{not json'), 400, 'not JSON'),
        (_answer(srv, {'window_id': wid, 'label': label, 'x': 'y' * 10_000}), 413, 'at most'),
        (_answer(srv, {'window_id': wid, 'label': label, 'who': 'a\nb'}), 400, 'one line'),
        (_answer(srv, {'window_id': wid, 'label': label}, Origin='http://elsewhere.example'),
         403, 'this page only'),
        (_request(srv, 'POST', '/api/other', b'{}'), 404, 'no such endpoint'),
        (_request(srv, 'GET', '/media/../../etc/passwd'), 404, 'no such file'),
        (_request(srv, 'GET', '/media/0/..%2F..%2Fpool.json'), 404, 'no such file'),
        (_request(srv, 'GET', '/media/0/../../recordings'), 404, 'no such file'),
        (_request(srv, 'GET', f'/media/{len(session.items)}/faces.png'), 404, 'no such file'),
        (_request(srv, 'GET', '/label_page/../../cli.py'), 404, 'no such file'),
    ]
    for (status, _, body), want_status, want_text in bad:
        assert status == want_status, body
        assert want_text in json.loads(body)['error']
    assert not session.answers_path.exists()

    # A good answer is written at once; sending it again (a lost reply) writes nothing more.
    status, _, body = _answer(srv, {'window_id': wid, 'label': label})
    assert status == 200 and json.loads(body)['written'] is True
    status, _, body = _answer(srv, {'window_id': wid, 'label': label})
    assert status == 200 and json.loads(body)['written'] is False
    assert [(a.window_id, a.label, a.who) for a in read_answers(session.answers_path)] == [
        (wid, label, 'tester')]


def test_page_and_media_come_from_this_server_only(server):
    srv, session = server
    status, headers, body = _request(srv, 'GET', '/')
    assert status == 200 and headers['Content-Security-Policy'] == CSP
    assert "default-src 'none'" in CSP
    refs = re.findall(rb'(?:src|href)="([^"]*)"', body)
    assert refs and all(r.startswith(b'/') and not r.startswith(b'//') for r in refs), refs
    for path in ('/label.js', '/label.css'):
        status, _, text = _request(srv, 'GET', path)
        assert status == 200 and b'http://' not in text and b'https://' not in text
    state = json.loads(_request(srv, 'GET', '/api/state')[2])
    assert [it['window_id'] for it in state['items']] == session.ids
    assert state['done'] == 0 and state['queued'] == len(session.ids)
    status, headers, png = _request(srv, 'GET', '/media/0/faces.png')
    assert status == 200 and png.startswith(b'\x89PNG') and headers['Content-Type'] == 'image/png'
    status, _, wav = _request(srv, 'GET', '/media/0/audio.wav')
    assert status == 200 and wav[:4] == b'RIFF' and wav[8:12] == b'WAVE'
    status, _, gif = _request(srv, 'GET', '/media/0/clip.gif')
    assert status == 200 and gif[:6] == b'GIF89a'
