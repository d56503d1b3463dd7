"""`lightmer label`: a local web page to answer a batch of pooled windows with the keyboard.

Served by the standard library's `http.server` (ThreadingHTTPServer): one person, one
machine, a handful of requests a second; no dependency to install on a robot builder's
laptop, and nothing on the page comes from elsewhere (the Content-Security-Policy forbids it).

Routes (nothing is ever looked up on disk by a path from the request):
- GET  /, /label.js, /label.css    the page (package files `labelling/page/*`)
- GET  /api/state                  labels, queue (manifest items), latest answers, counts
- POST /api/answer                 {"window_id", "label"[, "who"]}: appended to the answers
                                   file at once (active.answers: validated, atomic, locked;
                                   repeating a window's last answer writes nothing)
- GET  /media/<i>/faces.png | audio.wav | clip.gif   of the queue's i-th window
Errors are JSON {"error": message} with a 4xx status, and change nothing.

Who may ask: every request must name, in its Host header, the address the page was started
on (a DNS-rebinding page names its own domain there); a write must come from the page itself,
its Origin header (or, when a browser sends none, its Referer) naming that address. A client
has READ_TIMEOUT_S to send its request, and each client has a thread of its own, so no one
client holds the page; a client that goes away costs no traceback.
"""
from __future__ import annotations

import ipaddress
import json
import os
import sys
import threading
from dataclasses import dataclass
from functools import lru_cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from lightmer.active.answers import NOT_A_CLASS, Answer, append_answers, latest, read_answers
from lightmer.active.clean import window_pauses
from lightmer.active.pool import Pool
from lightmer.active.query import MANIFEST_FORMAT
from lightmer.evaluation.scoring import check_labels
from lightmer.labelling import media as label_media

MAX_BODY_BYTES = 4096          # an answer is ~100 bytes; anything larger is not one
READ_TIMEOUT_S = 10.0          # a request (line, headers, body) arrives within this, or is dropped
LOOPBACK_NAMES = ('127.0.0.1', 'localhost', '::1')
MEDIA = {'faces.png': 'image/png', 'audio.wav': 'audio/wav', 'clip.gif': 'image/gif'}
STATIC = {'/': ('index.html', 'text/html; charset=utf-8'),
          '/label.js': ('label.js', 'text/javascript; charset=utf-8'),
          '/label.css': ('label.css', 'text/css; charset=utf-8')}
# Same-origin only: no CDN, font or script from elsewhere can load, so the page works offline.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "media-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'")


class RequestError(Exception):
    """A request the page (or anyone) should not have sent: answered with `status`."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def load_batch(path: str | os.PathLike) -> dict:
    """A batch manifest written by `lightmer query` (ValueError if the file is not one)."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f'cannot read the batch {path}: {e}') from None
    if not isinstance(manifest, dict) or manifest.get('format') != MANIFEST_FORMAT:
        raise ValueError(f'{path} is not a batch manifest of `lightmer query` '
                         f'(format {MANIFEST_FORMAT!r})')
    return manifest


def newest_batch(pool: str | os.PathLike) -> Path:
    """The most recent manifest in POOL/batches (where `lightmer query` writes by default)."""
    batches = sorted(Path(pool, 'batches').glob('*.json'), key=lambda p: p.stat().st_mtime)
    if not batches:
        raise FileNotFoundError(f'{pool} has no batch yet; run `lightmer query --pool {pool} '
                                '--checkpoint M --n 30` first, or pass --batch')
    return batches[-1]


@dataclass
class LabelSession:
    """One queue of windows (a batch manifest) answered into one answers file."""

    pool_path: Path
    batch_path: Path
    answers_path: Path
    who: str = ''

    def __post_init__(self) -> None:
        self.pool = Pool(self.pool_path)
        manifest = load_batch(self.batch_path)
        self.labels = tuple(manifest['labels'])
        self.items = list(manifest['items'])
        if not self.items:
            raise ValueError(f'{self.batch_path} holds no window to label')
        table_ids = set(self.pool.table.ids)
        foreign = [it['window_id'] for it in self.items if it['window_id'] not in table_ids]
        if foreign:
            raise ValueError(f'{self.batch_path} asks for windows that {self.pool_path} does '
                             f'not hold ({foreign[:3]}...); pass the pool the batch was made from')
        self.ids = [it['window_id'] for it in self.items]
        # Silences inside each window (active.clean): the page warns that it may hold two
        # utterances; seconds from the window's first camera frame.
        self.pauses = [[[a - it['frames_s'][0], b - it['frames_s'][0]] for a, b in found]
                       for it, found in zip(self.items, window_pauses(self.pool, self.ids),
                                            strict=True)]
        check_labels([a.label for a in read_answers(self.answers_path)], self.labels,
                     str(self.answers_path), extras=NOT_A_CLASS)
        self._pool_lock = threading.Lock()      # Pool caches arrays in plain dicts
        self.media = lru_cache(maxsize=96)(self._media)

    # --- state and answers ------------------------------------------------------------------
    def state(self) -> dict:
        last = latest(read_answers(self.answers_path))
        answers = {w: last[w].label for w in self.ids if w in last}
        return {'labels': list(self.labels), 'extra': list(NOT_A_CLASS), 'who': self.who,
                'answers_file': str(self.answers_path), 'batch': str(self.batch_path),
                'items': [{k: it[k] for k in ('window_id', 'probs', 'predicted',
                                              'entropy_bits', 'segments_present',
                                              'stamp_s', 'recording')}
                          | {'pauses': pauses, 'span_s': it['frames_s'][1] - it['frames_s'][0],
                             'n_segments': self.pool.n_segments}
                          for it, pauses in zip(self.items, self.pauses, strict=True)],
                'answers': answers, 'done': len(answers), 'queued': len(self.items)}

    def answer(self, body: object) -> dict:
        """Validate one answer from the page and append it; RequestError (nothing written)
        for anything else."""
        if not isinstance(body, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, 'the body must be a JSON object '
                               '{"window_id": ..., "label": ...}')
        wid, label, who = body.get('window_id'), body.get('label'), body.get('who', self.who)
        if not isinstance(wid, str) or wid not in self.ids:
            raise RequestError(HTTPStatus.NOT_FOUND, f'window {wid!r} is not in this batch')
        if not isinstance(label, str) or label not in (*self.labels, *NOT_A_CLASS):
            raise RequestError(HTTPStatus.BAD_REQUEST,
                               f'label {label!r} is not one of {[*self.labels, *NOT_A_CLASS]}')
        if not isinstance(who, str) or len(who) > 100 or any(c in who for c in '\r\n'):
            raise RequestError(HTTPStatus.BAD_REQUEST, 'who must be one line of text')
        written = append_answers(self.answers_path, [Answer(wid, label, who.strip())],
                                 self.labels, skip_repeats=True)
        state = self.state()
        return {'window_id': wid, 'label': label, 'written': bool(written),
                'done': state['done'], 'queued': state['queued']}

    # --- media ------------------------------------------------------------------------------
    def _media(self, index: int, name: str) -> bytes | None:
        with self._pool_lock:
            view = self.pool.window(self.ids[index], self.labels)
            if name == 'audio.wav':
                return label_media.window_wav(self.pool, view)
        if name == 'faces.png':
            return label_media.face_strip_png(view)
        return label_media.camera_clip_gif(view)     # reads the bag: outside the pool lock

    def media_file(self, path: str) -> tuple[bytes, str]:
        parts = path.split('/')
        if (len(parts) != 4 or parts[1] != 'media' or not parts[2].isdigit()
                or parts[3] not in MEDIA or int(parts[2]) >= len(self.items)):
            raise RequestError(HTTPStatus.NOT_FOUND, f'no such file: {path}')
        data = self.media(int(parts[2]), parts[3])
        if data is None:
            raise RequestError(HTTPStatus.NOT_FOUND, 'no camera frames for this window: the '
                               'bag is not where it was pooled')
        return data, MEDIA[parts[3]]


def _static(name: str) -> bytes:
    return resources.files('lightmer.labelling').joinpath('page', name).read_bytes()


def allowed_hosts(host: str, port: int) -> frozenset[str] | None:
    """The Host header values (name:port, lower case) a page started on host:port answers;
    None when it listens on every address (0.0.0.0, ::), where any IP address with the port
    is accepted, and a name (what DNS rebinding needs) never is."""
    if host in ('', '0.0.0.0', '::'):
        return None
    names = LOOPBACK_NAMES if is_loopback(host) else (host,)
    return frozenset(f'[{n}]:{port}' if ':' in n else f'{n}:{port}' for n in names)


def _host_ok(netloc: str, allowed: frozenset[str] | None, port: int) -> bool:
    netloc = netloc.lower()
    if allowed is not None:
        return netloc in allowed
    name, _, netloc_port = netloc.rpartition(':')
    try:
        ipaddress.ip_address(name.strip('[]'))
    except ValueError:
        return False
    return netloc_port == str(port)


class _Handler(BaseHTTPRequestHandler):
    session: LabelSession          # set on the subclass made by `make_server`
    hosts: frozenset[str] | None   # allowed Host values, likewise (allowed_hosts)
    port: int
    server_version = 'lightmer-label'
    timeout = READ_TIMEOUT_S       # StreamRequestHandler: the socket's timeout

    def log_message(self, format, *args) -> None:      # noqa: A002 (the base class's name)
        pass                                            # one line per request is noise here

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        self.send_header('Content-Security-Policy', CSP)
        self.send_header('X-Content-Type-Options', 'nosniff')
        self.send_header('Cache-Control', 'no-store')
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: HTTPStatus, obj) -> None:
        self._send(status, json.dumps(obj).encode(), 'application/json')

    def _handle(self, work) -> None:
        try:
            if not _host_ok(self.headers.get('Host', ''), self.hosts, self.port):
                raise RequestError(HTTPStatus.MISDIRECTED_REQUEST, 'this page answers at the '
                                   'address it was started on only')
            work()
        except (ConnectionError, TimeoutError):    # the client went away or stalled
            self.close_connection = True
        except RequestError as e:
            self._json(e.status, {'error': str(e)})
        except (ValueError, OSError) as e:     # an answers file someone broke, a lost bag
            self._json(HTTPStatus.CONFLICT, {'error': f'{type(e).__name__}: {e}'})

    def do_GET(self) -> None:      # noqa: N802 (http.server's naming)
        self._handle(self._get)

    def _get(self) -> None:
        path = urlsplit(self.path).path
        if path == '/favicon.ico':
            self._send(HTTPStatus.NO_CONTENT, b'', 'image/x-icon')
        elif path in STATIC:
            name, ctype = STATIC[path]
            self._send(HTTPStatus.OK, _static(name), ctype)
        elif path == '/api/state':
            self._json(HTTPStatus.OK, self.session.state())
        else:
            self._send(HTTPStatus.OK, *self.session.media_file(path))

    def do_POST(self) -> None:     # noqa: N802
        self._handle(self._post)

    def _post(self) -> None:
        if urlsplit(self.path).path != '/api/answer':
            raise RequestError(HTTPStatus.NOT_FOUND, f'no such endpoint: POST {self.path}')
        self._check_source()
        try:
            length = int(self.headers.get('Content-Length', ''))
        except ValueError:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, 'send a Content-Length') from None
        if length > MAX_BODY_BYTES or length < 0:
            self.close_connection = True       # do not read (or wait for) what was sent
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f'an answer is at most {MAX_BODY_BYTES} bytes, got {length}')
        data = self.rfile.read(length)
        if len(data) < length:
            self.close_connection = True
            raise RequestError(HTTPStatus.BAD_REQUEST, f'announced {length} bytes, sent '
                               f'{len(data)}')
        try:
            body = json.loads(data or b'null')
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise RequestError(HTTPStatus.BAD_REQUEST, 'the body is not JSON (or nested '
                               'too deeply)') from None
        self._json(HTTPStatus.OK, self.session.answer(body))

    def _check_source(self) -> None:
        """A write comes from this page: its Origin (or, without one, its Referer) names the
        address the request was sent to (Host, itself checked in `_handle`)."""
        source = self.headers.get('Origin') or self.headers.get('Referer')
        parts = urlsplit(source or '')
        if (not source or parts.scheme != 'http'
                or parts.netloc.lower() != self.headers.get('Host', '').lower()):
            raise RequestError(HTTPStatus.FORBIDDEN, 'answers come from this page only, not '
                               f'from {source or "a request without Origin or Referer"}')


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """One line, not socketserver's traceback; nothing for a client that went away."""
        error = sys.exc_info()[1]
        if not isinstance(error, (ConnectionError, TimeoutError)):
            print(f'lightmer label: request from {client_address[0]} failed: '
                  f'{type(error).__name__}: {error}', file=sys.stderr, flush=True)


def make_server(session: LabelSession, host: str = '127.0.0.1',
                port: int = 8765) -> ThreadingHTTPServer:
    """A server bound to (host, port) (port 0: any free one; see `server.server_port`)."""
    handler = type('LabelHandler', (_Handler,), {'session': session})
    server = _Server((host, port), handler)
    handler.port = server.server_port
    handler.hosts = allowed_hosts(host, server.server_port)
    return server


def is_loopback(host: str) -> bool:
    if host == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
