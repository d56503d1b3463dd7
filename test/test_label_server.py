"""`lightmer label`'s server over real HTTP on loopback: bad requests get a 4xx with a message
and write nothing; a good answer is written once; the page loads nothing from elsewhere."""
from __future__ import annotations

import http.client
import json
import re
import socket
import struct
import threading

import pytest

from lightmer.active.answers import read_answers
from lightmer.labelling.server import CSP, LabelSession, make_server
from polling import wait_until


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


def _page(srv) -> str:
    return f'http://127.0.0.1:{srv.server_port}'


def _answer(srv, obj, **headers):
    """POST an answer as the page does: with the page's own Origin unless told otherwise
    (a header given as None is left out)."""
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    sent = {'Content-Type': 'application/json', 'Origin': _page(srv), **headers}
    return _request(srv, 'POST', '/api/answer', body,
                    {k: v for k, v in sent.items() if v is not None})


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


def test_only_this_page_at_its_own_address_may_write(server):
    """Cross-site writes (no Origin and a foreign Referer, or neither), DNS rebinding (a
    foreign Host with a matching Origin) and deeply nested JSON are refused; the page's own
    requests, with Origin or with only its Referer, are written."""
    srv, session = server
    wid, label = session.ids[0], session.labels[0]
    good = {'window_id': wid, 'label': label}
    refused = [
        (_answer(srv, good, Origin=None, Referer='http://elsewhere.example/x'), 403),
        (_answer(srv, good, Origin=None), 403),
        (_answer(srv, good, Origin='null'), 403),
        (_answer(srv, good, Host='evil.example', Origin='http://evil.example'), 421),
        (_answer(srv, good, Host=f'evil.example:{srv.server_port}',
                 Origin=f'http://evil.example:{srv.server_port}'), 421),
        (_request(srv, 'GET', '/api/state', headers={'Host': 'evil.example'}), 421),
        (_answer(srv, b'[' * 4000), 400),
    ]
    for (status, _, body), want in refused:
        assert status == want, body
        assert json.loads(body)['error']
    assert not session.answers_path.exists()
    assert _answer(srv, good, Origin=None, Referer=_page(srv) + '/')[0] == 200
    assert _answer(srv, {**good, 'label': session.labels[1]},
                   Host=f'localhost:{srv.server_port}',
                   Origin=f'http://localhost:{srv.server_port}')[0] == 200
    assert len(read_answers(session.answers_path)) == 2


def test_a_formula_in_who_is_written_as_text(server):
    srv, session = server
    wid, label = session.ids[0], session.labels[0]
    assert _answer(srv, {'window_id': wid, 'label': label, 'who': '=cmd|" /C calc"!A0'})[0] == 200
    text = session.answers_path.read_text()
    assert ',\'=cmd|' in text.replace('"', '') and ',=cmd' not in text.replace('"', '')


def test_a_stalled_or_vanished_client_holds_nothing_and_prints_no_traceback(server, capfd):
    srv, session = server
    srv.RequestHandlerClass.timeout = 1.0          # READ_TIMEOUT_S, shortened for the test
    head = (f'POST /api/answer HTTP/1.1\r\nHost: 127.0.0.1:{srv.server_port}\r\n'
            f'Origin: {_page(srv)}\r\nContent-Length: 4096\r\n\r\n').encode()
    stalled = socket.create_connection(('127.0.0.1', srv.server_port))
    stalled.sendall(head + b'{"window_id"')       # 12 of the 4,096 bytes announced
    try:
        # another client is served meanwhile, and the stalled one is let go
        assert _request(srv, 'GET', '/api/state')[0] == 200
        stalled.settimeout(10)       # let go after READ_TIMEOUT_S: a reply, or the close
        stalled.recv(4096)
    finally:
        stalled.close()
    threads = threading.active_count()
    # a client that resets its connection mid-body, and one that leaves before its reply
    for payload in (head + b'{', f'GET /media/0/clip.gif HTTP/1.1\r\nHost: 127.0.0.1:'
                    f'{srv.server_port}\r\n\r\n'.encode()):
        gone = socket.create_connection(('127.0.0.1', srv.server_port))
        gone.sendall(payload)
        gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        gone.close()                                # RST, not FIN
    assert _request(srv, 'GET', '/api/state')[0] == 200
    wait_until(lambda: threading.active_count() <= threads, 10, 'the handler threads to end')
    assert 'Traceback' not in capfd.readouterr().err
    assert not session.answers_path.exists()
