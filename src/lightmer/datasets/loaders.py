"""Index a CREMA-D or RAVDESS root as downloaded: clip records plus a report of what was skipped.

CREMA-D root: `VideoFlash/<clip>.flv` (video with its own MP3 track). A clip's audio is, in
this order, `AudioWAV/<clip>.wav` (16 kHz speech), `AudioMP3/<clip>.mp3`, or else the FLV's own
audio track; `ClipRecord.audio_source` says which ('wav', 'mp3', 'video').
RAVDESS root: `Actor_XX/01-01-EE-II-SS-RR-XX.mp4` (audio-video speech; the MP4's AAC track is
the audio). When the separate speech WAVs `Actor_XX/03-01-EE-II-SS-RR-XX.wav` are present
anywhere under the root (the Audio_Speech_Actors_01-24 download), the clip's audio comes from
its WAV instead.

Nothing is guessed: a malformed name, a known-bad CREMA-D clip, a clip missing one of its media,
a git-lfs pointer file or media that does not open is skipped with a reason. Video-only takes
and songs are skipped too, since the paper uses audio-visual speech only.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lightmer.datasets import media
from lightmer.datasets.names import CREMA_BAD_CLIPS, BadNameError, parse_crema, parse_ravdess

DATASETS = ('crema-d', 'ravdess')
_ACTOR_DIR = re.compile(r'^Actor_(\d{2})$')


@dataclass(frozen=True)
class ClipRecord:
    """One usable clip. `label` is the dataset's own code ('ANG' / '05')."""

    clip_id: str
    actor: str
    label: str
    intensity: str
    sentence: str
    video_path: Path
    audio_path: Path | None      # None: the audio is the video container's audio track

    @property
    def audio_source(self) -> str:
        """Where the clip's audio comes from: 'wav' / 'mp3' (a separate file) or 'video' (the
        video container's own audio track)."""
        if self.audio_path is None:
            return 'video'
        return self.audio_path.suffix.lower().lstrip('.')


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


def index_dataset(name: str, root: str | Path, check: bool = True
                  ) -> tuple[list[ClipRecord], list[Skipped]]:
    """All usable clips under `root`, sorted by clip id, and the files that were skipped.

    Args:
        name: 'crema-d' or 'ravdess'.
        root: the dataset folder as downloaded.
        check: open every media file (and decode a video's first frame) so that damaged
            downloads are reported here rather than failing later; a few ms per clip.
    Raises:
        FileNotFoundError when `root` (or its expected sub-folders) does not exist: that is a
        wrong path, not a damaged clip.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f'dataset root {root} does not exist or is not a folder')
    if name == 'crema-d':
        records, skipped = _index_crema(root)
    elif name == 'ravdess':
        records, skipped = _index_ravdess(root)
    else:
        raise ValueError(f'unknown dataset {name!r}; choose one of {DATASETS}')
    if check:
        records, more = _check_records(records)
        skipped += more
    records.sort(key=lambda r: r.clip_id)
    skipped.sort(key=lambda s: str(s.path))
    return records, skipped


def _visible_files(folder: Path, suffix: str) -> Iterable[Path]:
    # Hidden files (macOS '._x.flv' resource forks, '.DS_Store') are not dataset files.
    return (p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith('.') and p.suffix.lower() == suffix)


# CREMA-D's separate audio folders, in the order they are preferred, with their file suffix.
CREMA_AUDIO_DIRS = (('AudioWAV', '.wav'), ('AudioMP3', '.mp3'))


def _index_crema(root: Path) -> tuple[list[ClipRecord], list[Skipped]]:
    video_dir = root / 'VideoFlash'
    if not video_dir.is_dir():
        raise FileNotFoundError(f'{video_dir} not found: a CREMA-D root holds VideoFlash/ '
                                '(*.flv), and optionally AudioWAV/ (*.wav) or AudioMP3/ (*.mp3)')
    skipped: list[Skipped] = []

    def names(folder: Path, suffix: str) -> dict:
        found = {}
        if not folder.is_dir():
            return found
        for p in _visible_files(folder, suffix):
            try:
                parsed = parse_crema(p.stem)
            except BadNameError as e:
                skipped.append(Skipped(p, f'malformed name: {e}'))
                continue
            if parsed.clip_id in CREMA_BAD_CLIPS:
                skipped.append(Skipped(p, 'known-bad CREMA-D clip'))
                continue
            found[parsed.clip_id] = (parsed, p)
        return found

    videos = names(video_dir, '.flv')
    audio_files = [names(root / folder, suffix) for folder, suffix in CREMA_AUDIO_DIRS]
    records = []
    for clip_id, (parsed, video) in videos.items():
        # The first separate file that exists; none: the FLV's own track (checked later).
        audio = next((found[clip_id][1] for found in audio_files if clip_id in found), None)
        records.append(ClipRecord(clip_id=clip_id, actor=parsed.actor, label=parsed.emotion,
                                  intensity=parsed.level, sentence=parsed.sentence,
                                  video_path=video, audio_path=audio))
    for found in audio_files:
        for clip_id, (_, audio) in found.items():
            if clip_id not in videos:
                skipped.append(Skipped(audio, f'no VideoFlash/{clip_id}.flv for this audio'))
    return records, skipped


def _index_ravdess(root: Path) -> tuple[list[ClipRecord], list[Skipped]]:
    actor_dirs = sorted(p for p in root.rglob('Actor_*') if p.is_dir())
    if not actor_dirs:
        raise FileNotFoundError(f'no Actor_XX folders under {root}: a RAVDESS root holds '
                                'Actor_01 .. Actor_24 with the video (*.mp4) files')
    skipped: list[Skipped] = []
    videos: dict[str, tuple] = {}
    wavs: dict[str, Path] = {}
    for folder in actor_dirs:
        m = _ACTOR_DIR.match(folder.name)
        if m is None:
            skipped.append(Skipped(folder, 'folder name is not Actor_XX'))
            continue
        for p in sorted(q for q in folder.iterdir() if q.is_file() and not q.name.startswith('.')):
            if p.suffix.lower() not in ('.mp4', '.wav'):
                continue
            try:
                parsed = parse_ravdess(p.stem)
            except BadNameError as e:
                skipped.append(Skipped(p, f'malformed name: {e}'))
                continue
            if parsed.actor != m.group(1):
                skipped.append(Skipped(p, f'actor {parsed.actor} in the name but the file '
                                          f'is in {folder.name}'))
            elif parsed.channel != '01':
                skipped.append(Skipped(p, 'song, not speech (the paper uses speech only)'))
            elif p.suffix.lower() == '.wav':
                if parsed.modality != '03':
                    skipped.append(Skipped(p, 'a .wav must be an audio-only (03) file'))
                else:
                    wavs[parsed.take] = p
            elif parsed.modality != '01':
                skipped.append(Skipped(p, 'video without audio (modality 02); the paper uses '
                                          'audio-visual clips (01)'))
            elif parsed.clip_id in videos:
                skipped.append(Skipped(p, f'duplicate of {videos[parsed.clip_id][1]}'))
            else:
                videos[parsed.clip_id] = (parsed, p)
    records = [ClipRecord(clip_id=clip_id, actor=parsed.actor, label=parsed.emotion,
                          intensity=parsed.intensity, sentence=parsed.statement,
                          video_path=video, audio_path=wavs.get(parsed.take))
               for clip_id, (parsed, video) in videos.items()]
    return records, skipped


NO_AUDIO = ('no audio: the video has no audio track and no separate audio file was found '
            '(CREMA-D: AudioWAV/<clip>.wav or AudioMP3/<clip>.mp3; RAVDESS: 03-01-*.wav)')


def _check_records(records: list[ClipRecord]) -> tuple[list[ClipRecord], list[Skipped]]:
    good, bad = [], []
    for r in records:
        try:
            media.check_media(r.video_path, video=True, audio=False)
            if r.audio_path is None and not media.has_audio(r.video_path):
                bad.append(Skipped(r.video_path, NO_AUDIO))
                continue
            if r.audio_path is not None:
                media.check_media(r.audio_path, video=False, audio=True)
        except media.MediaError as e:
            bad.append(Skipped(r.video_path, f'unreadable media: {e}'))
            continue
        good.append(r)
    return good, bad


def format_skipped(skipped: list[Skipped], limit: int = 20) -> str:
    """A short human-readable skip report: counts per reason kind, then the first entries."""
    if not skipped:
        return 'skipped: none'
    kinds: dict[str, int] = {}
    for s in skipped:
        kind = s.reason.split(':')[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    counts = ', '.join(f'{k} x{n}' for k, n in sorted(kinds.items()))
    lines = [f'skipped {len(skipped)}: {counts}']
    lines += [f'  {s.path.name}: {s.reason}' for s in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f'  ... and {len(skipped) - limit} more')
    return '\n'.join(lines)
