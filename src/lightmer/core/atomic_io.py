"""Atomic file writes: a reader (or a resumed run) never sees a half-written file."""
from __future__ import annotations

import io
import json
import os
import tempfile
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, fsync it, then rename it.

    The rename is atomic on POSIX within one file system, so after a crash `path` holds
    either the old content or the new one, never a truncated mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 & ~umask).
        os.chmod(tmp_path, 0o666 & ~_umask())
        with open(tmp_path, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding='utf-8'))


def atomic_save_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + '\n')


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    import torch  # heavy, and only checkpoints need it (node processes on ONNX never do)

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_savez(path: str | os.PathLike, **arrays) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, 'wb') as f:  # a file object keeps numpy from appending '.npz'
            np.savez(f, **arrays)

    return atomic_write(path, write)


def wav_bytes(audio, sample_rate: int) -> bytes:
    """float mono (n,) in [-1, 1] -> a 16-bit PCM WAV file's bytes (clipped, not wrapped)."""
    pcm = (np.clip(np.asarray(audio, dtype=np.float64), -1, 1 - 1 / 32768) * 32768
           ).astype('<i2')
    buf = io.BytesIO()
    with wave.open(buf, 'wb') as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def atomic_write_wav(path: str | os.PathLike, audio, sample_rate: int) -> Path:
    """float mono (n,) in [-1, 1] -> 16-bit PCM WAV at `sample_rate` Hz (clipped, not wrapped)."""
    return atomic_write_bytes(path, wav_bytes(audio, sample_rate))
