"""The numpy MTCNN cascade on the exported ONNX nets equals facenet-pytorch's detector.

Box for box on real faces (the scikit-image astronaut at several sizes and positions, frames of
the generated corpus), and "no face", never an exception, on images too small or too odd.
"""
import numpy as np
import pytest
import torch
from facenet_pytorch import MTCNN
from PIL import Image
from skimage import data
from torch.nn.functional import interpolate
from torchvision.ops import nms as torchvision_nms

from lightmer.core.backend import mtcnn_nets
from lightmer.core.mtcnn import area_resize, detect_faces, integral_image, nms, scale_pyramid
from lightmer.datasets.media import decode_video

torch.set_num_threads(1)
# Box corners of the two detectors agree to this many pixels: their regression outputs come
# from two float32 convolution libraries (differences seen: <= 5e-5 px).
BOX_ATOL_PX = 1e-3
PROB_ATOL = 1e-5


@pytest.fixture(scope='module')
def facenet():
    return MTCNN(keep_all=True, min_face_size=40, post_process=False, select_largest=False)


@pytest.fixture(scope='module')
def nets(onnx_export):
    return mtcnn_nets(onnx_export[1], threads=1)


def _astronaut_in(h: int, w: int, side: int, x0: int, y0: int) -> np.ndarray:
    """uint8 (h, w, 3): the astronaut photo resized to side x side with its top-left corner at
    (x0, y0) (may be off the frame: cut) on a grey frame."""
    photo = np.asarray(Image.fromarray(data.astronaut()).resize((side, side)))
    frame = np.full((h, w, 3), 128, np.uint8)
    ys, xs = slice(max(y0, 0), min(y0 + side, h)), slice(max(x0, 0), min(x0 + side, w))
    frame[ys, xs] = photo[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
    return frame


def _assert_same_detections(facenet, nets, image: np.ndarray) -> int:
    boxes, probs = facenet.detect(image)
    mine_boxes, mine_probs = detect_faces(image, nets, min_face_size=40)
    if boxes is None:
        assert mine_boxes.shape == (0, 4) and mine_probs.shape == (0,)
        return 0
    boxes, probs = np.asarray(boxes, np.float64), np.asarray(probs, np.float64)
    assert mine_boxes.shape == boxes.shape                      # same faces, same order
    np.testing.assert_allclose(mine_boxes, boxes, rtol=0, atol=BOX_ATOL_PX)
    np.testing.assert_allclose(mine_probs, probs, rtol=0, atol=PROB_ATOL)
    return len(boxes)


@pytest.mark.parametrize('frame_hw, side, corner', [
    ((512, 512), 512, (0, 0)),               # the photo itself
    ((480, 640), 300, (170, 90)),            # face ~60 px, centred
    ((480, 640), 200, (-60, 330)),           # cut by the left and bottom edges
    ((720, 1280), 640, (600, 40)),           # 720p, face ~125 px
    ((360, 480), 120, (340, 10)),            # small face near the top-right corner
    ((333, 517), 260, (101, 37)),            # odd sizes
])
def test_boxes_equal_facenet_on_the_astronaut(facenet, nets, frame_hw, side, corner):
    image = _astronaut_in(*frame_hw, side, *corner)
    assert _assert_same_detections(facenet, nets, image) >= 1


def test_numpy_and_onnx_integral_images_agree(nets):
    rng = np.random.default_rng(3)
    for shape in ((1, 1), (37, 53), (480, 640)):
        image = rng.integers(0, 256, (*shape, 3)).astype(np.uint8)
        want = image.astype(np.int64).cumsum(0).cumsum(1)
        for got in (integral_image(image), nets.integral(image)):
            assert got.shape == (shape[0] + 1, shape[1] + 1, 3)
            np.testing.assert_array_equal(got[1:, 1:], want)
            assert not got[0].any() and not got[:, 0].any()
    # the cascade without the ONNX integral (numpy's) finds the same boxes
    image = _astronaut_in(480, 640, 300, 170, 90)
    np.testing.assert_array_equal(detect_faces(image, nets._replace(integral=None))[0],
                                  detect_faces(image, nets)[0])


def test_boxes_equal_facenet_on_generated_corpus_frames(facenet, nets, tiny_corpus):
    faces = 0
    clips = sorted((tiny_corpus / 'VideoFlash').glob('*.flv'))[::4]           # 6 of 24 clips
    for clip in clips:
        video, _, _ = decode_video(clip)
        for frame in video[[0, len(video) // 2]]:
            faces += _assert_same_detections(facenet, nets, frame) > 0
    assert faces >= len(clips)                   # the corpus shows a face in most frames


@pytest.mark.parametrize('shape', [(1, 1), (11, 40), (20, 30), (12, 500), (50, 50),
                                   (97, 131)])
def test_small_and_odd_images_are_no_face_never_an_error(nets, shape):
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3)).astype(np.uint8)
    boxes, probs = detect_faces(image, nets, min_face_size=40)
    assert boxes.shape == (0, 4) and probs.shape == (0,)
    assert scale_pyramid(1, 1, 40) == [] and scale_pyramid(29, 500, 40) == []
    assert len(scale_pyramid(40, 40, 40)) == 1            # exactly one 12 px scale


def test_area_resize_is_bit_for_bit_torch_area_interpolation():
    rng = np.random.default_rng(1)
    for shape, size in (((512, 512), (154, 154)), ((97, 131), (24, 24)), ((9, 13), (24, 24)),
                        ((720, 1280), (217, 385)), ((31, 7), (5, 48))):
        image = rng.integers(0, 256, (*shape, 3)).astype(np.uint8)
        t = torch.from_numpy(image)[None].permute(0, 3, 1, 2).float()
        want = interpolate(t, size=size, mode='area')[0].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(area_resize(image, size), want)
    with pytest.raises(ValueError, match='uint8'):
        area_resize(np.zeros((4, 4, 3), np.float32), (2, 2))


def test_nms_keeps_what_torchvision_keeps():
    rng = np.random.default_rng(2)
    for _ in range(20):
        xy = rng.uniform(0, 100, (60, 2)).astype(np.float32)
        boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (60, 2)).astype(np.float32)], 1)
        scores = rng.uniform(0, 1, 60).astype(np.float32)
        for threshold in (0.5, 0.7):
            want = torchvision_nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold)
            np.testing.assert_array_equal(nms(boxes, scores, threshold), want.numpy())
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).shape == (0,)


def test_min_overlap_suppression_drops_a_box_inside_another():
    boxes = np.array([[0, 0, 100, 100], [10, 10, 40, 40], [200, 200, 230, 230]], np.float32)
    scores = np.array([0.9, 0.95, 0.8], np.float32)
    # IoU of the inner box is small (0.09) but it lies wholly inside the big one.
    np.testing.assert_array_equal(nms(boxes, scores, 0.7), [1, 0, 2])
    np.testing.assert_array_equal(nms(boxes, scores, 0.7, over_min=True), [1, 2])
