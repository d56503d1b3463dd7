"""Strict parsing of CREMA-D and RAVDESS file names (facts: shared CONTEXT §3).

A name either parses completely or raises `BadNameError` with the reason; nothing is guessed.
The loaders turn a `BadNameError` into a skip-report entry.

CREMA-D: `ActorID_Sentence_Emotion_Level`, e.g. `1001_DFA_ANG_XX`.
RAVDESS: `MM-VV-EE-II-SS-RR-AA`, e.g. `01-01-05-01-02-01-12` (modality, vocal channel, emotion,
intensity, statement, repetition, actor).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from lightmer.core.config import PRESETS

# --- CREMA-D ---------------------------------------------------------------------------------
CREMA_EMOTIONS = PRESETS['crema-d'].codes      # one list of codes: the preset's class order
CREMA_LEVELS = ('LO', 'MD', 'HI', 'XX')
# The 12 sentences, by code; the texts are what the actors said (used by the generated corpus).
CREMA_SENTENCES = {
    'IEO': "It's eleven o'clock",
    'TIE': 'That is exactly what happened',
    'IOM': "I'm on my way to the meeting",
    'IWW': 'I wonder what this is about',
    'TAI': 'The airplane is almost full',
    'MTI': 'Maybe tomorrow it will be cold',
    'IWL': 'I would like a new alarm clock',
    'ITH': "I think I have a doctor's appointment",
    'DFA': "Don't forget a jacket",
    'ITS': "I think I've seen this before",
    'TSI': 'The surface is slick',
    'WSI': "We'll stop in a couple of minutes",
}
CREMA_ACTORS = range(1001, 1092)          # 91 actors, 1001..1091
# Clips known to be broken in the distributed dataset (empty or damaged media).
CREMA_BAD_CLIPS = frozenset({
    '1076_MTI_NEU_XX', '1076_MTI_SAD_XX', '1064_TIE_SAD_XX', '1064_IEO_DIS_MD'})

_CREMA_RE = re.compile(r'^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$')

# --- RAVDESS ---------------------------------------------------------------------------------
RAVDESS_MODALITIES = {'01': 'audio-video', '02': 'video-only', '03': 'audio-only'}
RAVDESS_CHANNELS = {'01': 'speech', '02': 'song'}
RAVDESS_EMOTIONS = PRESETS['ravdess'].codes
RAVDESS_STATEMENTS = {'01': 'Kids are talking by the door', '02': 'Dogs are sitting by the door'}
RAVDESS_ACTORS = range(1, 25)             # 24 actors, 01..24
_RAVDESS_RE = re.compile(r'^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$')


class BadNameError(ValueError):
    """A file name that does not follow the dataset's naming scheme; the message says why."""


@dataclass(frozen=True)
class CremaName:
    actor: str       # '1001'
    sentence: str    # 'DFA'
    emotion: str     # 'ANG'
    level: str       # 'LO' | 'MD' | 'HI' | 'XX'

    @property
    def clip_id(self) -> str:
        return f'{self.actor}_{self.sentence}_{self.emotion}_{self.level}'


@dataclass(frozen=True)
class RavdessName:
    modality: str    # '01' audio-video, '02' video only, '03' audio only
    channel: str     # '01' speech, '02' song
    emotion: str     # '01'..'08'
    intensity: str   # '01' normal, '02' strong
    statement: str   # '01' | '02'
    repetition: str  # '01' | '02'
    actor: str       # '01'..'24'

    @property
    def clip_id(self) -> str:
        return '-'.join((self.modality, self.channel, self.emotion, self.intensity,
                         self.statement, self.repetition, self.actor))

    @property
    def take(self) -> str:
        """The take without the modality: `VV-EE-II-SS-RR-AA`, shared by a video and its WAV."""
        return self.clip_id[3:]


def parse_crema(stem: str) -> CremaName:
    """Parse a CREMA-D file stem (no extension) such as `1001_DFA_ANG_XX`; raises BadNameError."""
    m = _CREMA_RE.match(stem)
    if m is None:
        raise BadNameError(f'{stem!r} is not ActorID_Sentence_Emotion_Level '
                           '(e.g. 1001_DFA_ANG_XX)')
    actor, sentence, emotion, level = m.groups()
    if int(actor) not in CREMA_ACTORS:
        raise BadNameError(f'{stem!r}: actor {actor} outside 1001..1091')
    if sentence not in CREMA_SENTENCES:
        raise BadNameError(f'{stem!r}: unknown sentence code {sentence}')
    if emotion not in CREMA_EMOTIONS:
        raise BadNameError(f'{stem!r}: unknown emotion code {emotion} (expected {CREMA_EMOTIONS})')
    if level not in CREMA_LEVELS:
        raise BadNameError(f'{stem!r}: unknown level {level} (expected {CREMA_LEVELS})')
    return CremaName(actor, sentence, emotion, level)


def parse_ravdess(stem: str) -> RavdessName:
    """Parse a RAVDESS file stem such as `01-01-05-01-02-01-12`; raises BadNameError."""
    m = _RAVDESS_RE.match(stem)
    if m is None:
        raise BadNameError(f'{stem!r} is not MM-VV-EE-II-SS-RR-AA (seven two-digit fields)')
    name = RavdessName(*m.groups())
    checks = (
        (name.modality in RAVDESS_MODALITIES, f'modality {name.modality} not in 01..03'),
        (name.channel in RAVDESS_CHANNELS, f'vocal channel {name.channel} not in 01..02'),
        (name.emotion in RAVDESS_EMOTIONS, f'emotion {name.emotion} not in 01..08'),
        (name.intensity in ('01', '02'), f'intensity {name.intensity} not in 01..02'),
        # RAVDESS has no strong-intensity neutral take.
        (not (name.emotion == '01' and name.intensity == '02'), 'neutral with strong intensity'),
        (name.statement in RAVDESS_STATEMENTS, f'statement {name.statement} not in 01..02'),
        (name.repetition in ('01', '02'), f'repetition {name.repetition} not in 01..02'),
        (int(name.actor) in RAVDESS_ACTORS, f'actor {name.actor} not in 01..24'),
    )
    for ok, why in checks:
        if not ok:
            raise BadNameError(f'{stem!r}: {why}')
    return name
