"""The ONNX export on onnxruntime computes what the checkpoint computes on torch, without torch;
unusable exports are refused with messages that say what to do."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile
import torch
from skimage import data

from lightmer.core.backend import backend_of, export_meta_path, face_cropper, load_model, read_meta
from lightmer.core.checkpoint import CheckpointError
from lightmer.core.export import export_checkpoint
from lightmer.core.features import FaceCropper, log_mel_at, resample, to_mono
from lightmer.ros.params import FaceCropParams, FusionParams, load_for_node, load_model_for_node
from lightmer.stream.pipeline import OfflinePeoplePipeline, OfflinePipeline

LOGIT_ATOL = 1e-4           # the bound; differences seen are ~1e-6


@pytest.fixture(scope='module')
def both(onnx_export):
    checkpoint, export = onnx_export
    return load_model(checkpoint), load_model(export)


def test_backend_follows_the_file_name():
    assert backend_of('m.onnx') == 'onnxruntime'
    assert backend_of('runs/best.pt') == backend_of('model.ckpt') == 'torch'


def test_metadata_of_the_export_is_the_checkpoint_s(onnx_export, both):
    checkpoint, export = onnx_export
    torch_model, onnx_model = both
    assert torch_model.backend == 'torch' and onnx_model.backend == 'onnxruntime'
    assert read_meta(export) == read_meta(checkpoint) == onnx_model.meta == torch_model.meta
    info = json.loads(export_meta_path(export).read_text())
    assert info['meta']['labels'] == list(torch_model.meta.labels)
    assert info['meta']['provenance']['dataset'] == 'test (untrained)'
    assert info['exported']['from'] == 'model.pt'
    for part, name in info['parts'].items():             # every part carries the same JSON
        props = {p.key: p.value for p in onnx.load(export.parent / name).metadata_props}
        assert json.loads(props['lightmer']) == info and props['lightmer_part'] == part


def test_logits_match_torch_on_random_inputs(both):
    torch_model, onnx_model = both
    rng = np.random.default_rng(0)
    for _ in range(5):
        face = rng.integers(0, 256, (98, 80)).astype(np.uint8)
        mel = rng.normal(0, 1, (128, 43)).astype(np.float32)
        want = torch_model.segment_logits(face, mel)
        got = onnx_model.segment_logits(face, mel)
        assert got.dtype == np.float64 and got.shape == want.shape == (6,)
        np.testing.assert_allclose(got, want, rtol=0, atol=LOGIT_ATOL)
    for n in (1, 3, 5):
        logits = rng.normal(0, 3, (n, 6))
        np.testing.assert_allclose(onnx_model.fuse(logits), torch_model.fuse(logits),
                                   rtol=0, atol=1e-12)
        assert onnx_model.fuse(logits).sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r'\(N, C\)'):
        onnx_model.fuse(np.zeros((0, 6)))


def test_logits_match_torch_on_a_real_face_and_real_speech(onnx_export, both, tmp_path):
    torch_model, onnx_model = both
    meta = read_meta(onnx_export[1])
    [crop] = face_cropper(onnx_export[1])([data.astronaut()])
    [torch_crop] = FaceCropper(meta.features)([data.astronaut()])
    np.testing.assert_array_equal(crop, torch_crop)        # equal boxes give equal crops
    assert shutil.which('espeak-ng'), 'espeak-ng is a test dependency (apt install espeak-ng)'
    wav = tmp_path / 'speech.wav'
    subprocess.run(['espeak-ng', '-w', str(wav), 'hello robot, how are you'], check=True,
                   timeout=30)
    audio, sr = soundfile.read(wav, dtype='float32')
    audio = resample(to_mono(audio), sr, meta.features.sample_rate)
    mel = log_mel_at(audio, 0.75, meta.features)
    np.testing.assert_allclose(onnx_model.segment_logits(crop, mel),
                               torch_model.segment_logits(crop, mel), rtol=0, atol=LOGIT_ATOL)


def test_the_onnx_path_imports_no_torch(onnx_export):
    """In a fresh interpreter: metadata, model and face cropper from the export; then a real
    detection and a forward pass; torch must never have been imported."""
    code = (
        'import sys\n'
        'import numpy as np\n'
        'from skimage import data\n'
        'from lightmer.core.backend import face_cropper, load_model, read_meta\n'
        f'path = {str(onnx_export[1])!r}\n'
        'meta = read_meta(path)\n'
        'assert "onnxruntime" not in sys.modules, "read_meta imported onnxruntime"\n'
        'model = load_model(path)\n'
        'cropper = face_cropper(path)\n'
        '[crop] = cropper([data.astronaut()])\n'
        'probs = model.fuse(model.segment_logits(crop, np.zeros((128, 43), np.float32))[None])\n'
        'assert abs(probs.sum() - 1) < 1e-9\n'
        'print(sorted(m for m in sys.modules if m.split(".")[0] in '
        '("torch", "torchvision", "facenet_pytorch")))\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '[]'


def test_a_checkpoint_is_read_once_by_each_of_its_users(onnx_export, monkeypatch):
    """The offline pipelines and the nodes' loading read the .pt once: the metadata comes with
    the model (fusion, pipelines) and the face cropper takes the metadata already read."""
    checkpoint = onnx_export[0]
    reads = []
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        reads.append(Path(f) == checkpoint)         # facenet-pytorch loads its own weights too
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, 'load', counting_load)

    def reads_of(build) -> int:
        reads.clear()
        build()
        return sum(reads)

    def face_node_loading():
        path, meta, _ = load_for_node(FaceCropParams(model_path=str(checkpoint)))
        face_cropper(path, meta=meta)

    assert reads_of(lambda: OfflinePipeline(checkpoint)) == 1
    assert reads_of(lambda: OfflinePeoplePipeline(checkpoint)) == 1
    assert reads_of(lambda: load_model_for_node(FusionParams(model_path=str(checkpoint)))) == 1
    assert reads_of(face_node_loading) == 1
    assert reads_of(lambda: read_meta(checkpoint)) == 1


def _copy_export(export, directory):
    for path in export.parent.glob(f'{export.stem}.*'):
        shutil.copy(path, directory / path.name)
    return directory / export.name


def test_a_truncated_part_is_refused(onnx_export, tmp_path):
    export = _copy_export(onnx_export[1], tmp_path)
    blob = export.read_bytes()
    export.write_bytes(blob[:len(blob) // 3])
    with pytest.raises(CheckpointError, match='truncated, corrupt or not an ONNX file'):
        load_model(export)
    pnet = export.with_name('model.mtcnn_pnet.onnx')
    pnet.write_bytes(pnet.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match='mtcnn_pnet.onnx .truncated'):
        face_cropper(export)


def test_an_onnx_file_without_lightmer_metadata_is_refused(onnx_export, tmp_path):
    foreign = tmp_path / 'foreign.onnx'
    proto = onnx.load(onnx_export[1])
    del proto.metadata_props[:]
    onnx.save(proto, foreign)
    with pytest.raises(CheckpointError, match='no metadata file foreign.onnx.json'):
        read_meta(foreign)
    # with a metadata file copied beside it, the model itself still says it is foreign
    shutil.copy(export_meta_path(onnx_export[1]), export_meta_path(foreign))
    info = json.loads(export_meta_path(foreign).read_text())
    info['parts']['segment'] = foreign.name
    export_meta_path(foreign).write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match='carries no lightmer metadata'):
        load_model(foreign)


def test_mixed_missing_or_foreign_parts_are_refused(onnx_export, tmp_path):
    export = _copy_export(onnx_export[1], tmp_path)
    other = tmp_path / 'other'
    export_checkpoint(onnx_export[0], 'onnx', other)           # the same model, exported again
    shutil.copy(other / 'model.fusion.onnx', export.with_name('model.fusion.onnx'))
    with pytest.raises(CheckpointError, match='not the fusion part of the export'):
        load_model(export)
    export.with_name('model.fusion.onnx').unlink()
    with pytest.raises(CheckpointError, match='fusion part .* is missing; copy the whole'):
        load_model(export)
    export_meta_path(export).write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match='not lightmer export metadata'):
        read_meta(export)
    info = json.loads(export_meta_path(other / 'model.onnx').read_text())
    info['format_version'] = 99
    export_meta_path(export).write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match='format version 99'):
        read_meta(export)
    info['format_version'] = 1
    del info['meta']['labels']
    export_meta_path(export).write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=r"lacks \['labels'\]"):
        read_meta(export)
    with pytest.raises(CheckpointError, match='no model at'):
        read_meta(tmp_path / 'absent.onnx')
