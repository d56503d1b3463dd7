"""Strict CREMA-D / RAVDESS name parsing: valid names round-trip, anything else is refused."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lightmer.datasets.names import (
    CREMA_EMOTIONS,
    CREMA_LEVELS,
    CREMA_SENTENCES,
    RAVDESS_EMOTIONS,
    BadNameError,
    parse_crema,
    parse_ravdess,
)


def test_crema_name_fields():
    n = parse_crema('1001_DFA_ANG_XX')
    assert (n.actor, n.sentence, n.emotion, n.level) == ('1001', 'DFA', 'ANG', 'XX')
    assert n.clip_id == '1001_DFA_ANG_XX'


@given(actor=st.integers(1001, 1091), sentence=st.sampled_from(sorted(CREMA_SENTENCES)),
       emotion=st.sampled_from(CREMA_EMOTIONS), level=st.sampled_from(CREMA_LEVELS))
def test_every_valid_crema_name_round_trips(actor, sentence, emotion, level):
    stem = f'{actor}_{sentence}_{emotion}_{level}'
    assert parse_crema(stem).clip_id == stem


@pytest.mark.parametrize('stem', [
    '1040_ITH_SAD_X',      # the misnamed file of old CREMA-D copies
    '1001_DFA_ANG',        # a field missing
    '1001_DFA_ANG_XX_2',   # a field too many
    '1000_DFA_ANG_XX',     # actor below 1001
    '1092_DFA_ANG_XX',     # actor above 1091
    '1001_XYZ_ANG_XX',     # unknown sentence
    '1001_DFA_CAL_XX',     # unknown emotion
    '1001_DFA_ANG_VH',     # unknown level
    '1001_dfa_ang_xx',     # lower case
    '1001-DFA-ANG-XX',     # wrong separator
    ' 1001_DFA_ANG_XX',    # stray space
])
def test_malformed_crema_names_are_refused(stem):
    with pytest.raises(BadNameError, match='1'):
        parse_crema(stem)


def test_ravdess_name_fields():
    n = parse_ravdess('01-01-05-02-01-02-12')
    assert (n.modality, n.channel, n.emotion, n.intensity, n.statement, n.repetition,
            n.actor) == ('01', '01', '05', '02', '01', '02', '12')
    assert n.take == '01-05-02-01-02-12'


@given(modality=st.sampled_from(['01', '02', '03']), channel=st.sampled_from(['01', '02']),
       emotion=st.sampled_from(RAVDESS_EMOTIONS), intensity=st.sampled_from(['01', '02']),
       statement=st.sampled_from(['01', '02']), rep=st.sampled_from(['01', '02']),
       actor=st.integers(1, 24))
def test_every_valid_ravdess_name_round_trips(modality, channel, emotion, intensity, statement,
                                              rep, actor):
    stem = f'{modality}-{channel}-{emotion}-{intensity}-{statement}-{rep}-{actor:02d}'
    if emotion == '01' and intensity == '02':
        with pytest.raises(BadNameError, match='neutral'):
            parse_ravdess(stem)
    else:
        assert parse_ravdess(stem).clip_id == stem


@pytest.mark.parametrize('stem, why', [
    ('01-01-05-01-02-01', 'MM-VV'),           # six fields
    ('1-01-05-01-02-01-12', 'MM-VV'),         # one digit
    ('04-01-05-01-02-01-12', 'modality'),
    ('01-03-05-01-02-01-12', 'channel'),
    ('01-01-09-01-02-01-12', 'emotion'),
    ('01-01-05-03-02-01-12', 'intensity'),
    ('01-01-01-02-02-01-12', 'neutral'),      # RAVDESS has no strong neutral
    ('01-01-05-01-03-01-12', 'statement'),
    ('01-01-05-01-02-03-12', 'repetition'),
    ('01-01-05-01-02-01-25', 'actor'),
    ('01-01-05-01-02-01-00', 'actor'),
])
def test_malformed_ravdess_names_are_refused(stem, why):
    with pytest.raises(BadNameError, match=why):
        parse_ravdess(stem)
