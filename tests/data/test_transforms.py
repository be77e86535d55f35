"""Host-side grain transforms against torchvision on PIL images (exact uint8 equality)."""
import numpy as np
import pytest
from PIL import Image

from jssl.data import transforms

torch = pytest.importorskip('torch')
TF = pytest.importorskip('torchvision.transforms.functional')
T = pytest.importorskip('torchvision.transforms')

INTERPOLATION_MODES = {'bilinear': T.InterpolationMode.BILINEAR, 'bicubic': T.InterpolationMode.BICUBIC}


@pytest.fixture(scope='module')
def image():
  """A real photo, uint8 [H, W, 3], landscape and reduced so the tests stay fast."""
  datasets = pytest.importorskip('sklearn.datasets')
  return np.asarray(Image.fromarray(datasets.load_sample_image('china.jpg')).resize((160, 120)))


def record(image):
  return {'image': image, 'label': np.int32(3), 'index': np.int64(17)}


def test_crop_params_bounds_and_statistics():
  rng = np.random.default_rng(0)
  height, width = 120, 160
  areas, ratios = [], []
  for _ in range(2000):
    top, left, h, w = transforms.crop_params(rng, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    assert 0 < h <= height and 0 < w <= width
    assert 0 <= top <= height - h and 0 <= left <= width - w
    areas.append(h * w / (height * width))
    ratios.append(w / h)
  areas, ratios = np.array(areas), np.array(ratios)
  assert areas.min() < 0.1 and areas.max() > 0.9
  # Rounding to whole pixels blurs the bounds slightly.
  assert 0.7 < ratios.min() < 0.77 and 1.3 < ratios.max() < 1.4


class TorchDraws:
  """Stands in for np.random.Generator, drawing the way torchvision's get_params does (torch's global RNG)."""

  def uniform(self, low, high):
    return torch.empty(1).uniform_(low, high).item()

  def integers(self, low, high):
    return torch.randint(low, high, size=(1,)).item()


@pytest.mark.parametrize('height, width, scale', [(120, 160, (0.08, 1.0)), (300, 40, (0.08, 1.0)),
                                                  (64, 64, (0.5, 1.0)), (20, 200, (0.3, 1.0))])
def test_crop_params_follow_torchvision_get_params(height, width, scale):
  # Given the same random draws, the same boxes (including after rejected attempts and the fallback).
  ratio = (3 / 4, 4 / 3)
  torch.manual_seed(0)
  theirs = [T.RandomResizedCrop.get_params(torch.zeros(3, height, width), scale, ratio) for _ in range(300)]
  torch.manual_seed(0)
  ours = [transforms.crop_params(TorchDraws(), height, width, scale, ratio) for _ in range(300)]
  assert ours == theirs


def test_crop_params_are_deterministic_given_the_generator():
  a = [transforms.crop_params(np.random.default_rng(5), 100, 80) for _ in range(3)]
  assert a[0] == a[1] == a[2]


@pytest.mark.parametrize('height, width, ratio, expected', [
    # No random crop can fit, so the central-crop fallback decides.
    (10, 100, (3 / 4, 4 / 3), (0, 43, 10, 13)),   # too wide: full height, width = round(h * 4/3)
    (100, 10, (3 / 4, 4 / 3), (43, 0, 13, 10)),   # too tall: full width, height = round(w / (3/4))
    (50, 60, (3 / 4, 4 / 3), (0, 0, 50, 60)),     # ratio in range: the whole image
])
def test_crop_params_fallback(height, width, ratio, expected):
  # scale > 1 makes every attempt larger than the image, as torchvision does before falling back.
  assert transforms.crop_params(np.random.default_rng(0), height, width, (2.0, 3.0), ratio) == expected


@pytest.mark.parametrize('interpolation', ['bilinear', 'bicubic'])
def test_resized_crop_matches_torchvision(image, interpolation):
  pil = Image.fromarray(image)
  resample = transforms.INTERPOLATIONS[interpolation]
  rng = np.random.default_rng(1)
  for size in (32, 96):
    top, left, h, w = transforms.crop_params(rng, pil.height, pil.width, (0.08, 1.0), (3 / 4, 4 / 3))
    ours = np.asarray(transforms.resized_crop(pil, top, left, h, w, size, resample))
    theirs = np.asarray(TF.resized_crop(pil, top, left, h, w, [size, size], INTERPOLATION_MODES[interpolation]))
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize('interpolation', ['bilinear', 'bicubic'])
def test_views_equal_torchvision_with_the_same_draws(image, interpolation):
  # Replay the transform's draws: crop box from crop_params, then the flip coin, per view.
  transform = transforms.RandomResizedCropViews(
      [dict(size=48, scale=(0.2, 1.0), interpolation=interpolation, flip_prob=0.5, num=6)])
  out = transform.random_map(record(image), np.random.default_rng(7))
  rng = np.random.default_rng(7)
  pil = Image.fromarray(image)
  flips = []
  for view in out['views']:
    top, left, h, w = transforms.crop_params(rng, pil.height, pil.width, (0.2, 1.0), (3 / 4, 4 / 3))
    expected = TF.resized_crop(pil, top, left, h, w, [48, 48], INTERPOLATION_MODES[interpolation])
    flips.append(rng.random() < 0.5)
    if flips[-1]:
      expected = TF.hflip(expected)
    np.testing.assert_array_equal(view, np.asarray(expected))
  assert any(flips) and not all(flips)


def test_second_size_is_the_same_crop_and_flip_resized_with_lanczos(image):
  # BEiT / CAE's RandomResizedCropAndInterpolationWithTwoPic (the official PIL version): one crop box, two sizes
  specs = [dict(size=48, second_size=24, interpolation='bicubic', flip_prob=0.5, num=4)]
  transform = transforms.RandomResizedCropViews(specs)
  out = transform.random_map(record(image), np.random.default_rng(5))
  assert [v.shape[0] for v in out['views']] == transforms.view_sizes(specs) == [48, 24] * 4
  rng = np.random.default_rng(5)
  pil = Image.fromarray(image)
  flips = []
  for big, small in zip(out['views'][::2], out['views'][1::2]):
    top, left, h, w = transforms.crop_params(rng, pil.height, pil.width, (0.08, 1.0), (3 / 4, 4 / 3))
    crop = pil.crop((left, top, left + w, top + h))
    expected = [crop.resize((48, 48), Image.BICUBIC), crop.resize((24, 24), Image.LANCZOS)]
    flips.append(rng.random() < 0.5)
    if flips[-1]:
      expected = [e.transpose(Image.FLIP_LEFT_RIGHT) for e in expected]
    np.testing.assert_array_equal(big, np.asarray(expected[0]))
    np.testing.assert_array_equal(small, np.asarray(expected[1]))
  assert any(flips) and not all(flips)
  with pytest.raises(ValueError, match='no scale/ratio/second_size'):
    transforms.RandomResizedCropViews([dict(size=24, resize=32, second_size=12)])


def test_flip_prob_extremes(image):
  spec = dict(size=40, scale=(0.5, 1.0))
  never = transforms.RandomResizedCropViews([dict(spec, flip_prob=0.0)])
  always = transforms.RandomResizedCropViews([dict(spec, flip_prob=1.0)])
  a = never.random_map(record(image), np.random.default_rng(3))['views'][0]
  b = always.random_map(record(image), np.random.default_rng(3))['views'][0]
  np.testing.assert_array_equal(a[:, ::-1], b)


def test_multi_crop_views_output(image):
  transform = transforms.build_pretrain_transform([
      dict(size=64, num=2, scale=(0.14, 1.0)),
      dict(size=32, num=6, scale=(0.05, 0.14), interpolation='bicubic'),
  ])
  out = transform.random_map(record(image), np.random.default_rng(0))
  assert set(out) == {'views', 'label', 'index'}
  assert isinstance(out['views'], tuple) and len(out['views']) == 8
  assert [v.shape for v in out['views']] == [(64, 64, 3)] * 2 + [(32, 32, 3)] * 6
  assert all(v.dtype == np.uint8 for v in out['views'])
  assert out['label'] == 3 and out['index'] == 17
  # Two views of the same spec are different crops.
  assert not np.array_equal(out['views'][0], out['views'][1])


def test_views_reject_unknown_options():
  with pytest.raises(ValueError, match='Unknown view options'):
    transforms.RandomResizedCropViews([dict(size=32, scales=(0.1, 1.0))])
  with pytest.raises(ValueError, match='Unknown interpolation'):
    transforms.RandomResizedCropViews([dict(size=32, interpolation='nearest')])


@pytest.mark.parametrize('shape', [(120, 160), (160, 120), (37, 53), (32, 32)])
@pytest.mark.parametrize('interpolation', ['bilinear', 'bicubic'])
def test_resize_center_crop_matches_torchvision(image, shape, interpolation):
  height, width = shape
  source = np.asarray(Image.fromarray(image).resize((width, height)))
  out = transforms.ResizeCenterCrop(resize=32, crop=28, interpolation=interpolation).map(record(source))
  reference = T.Compose([T.Resize(32, interpolation=INTERPOLATION_MODES[interpolation]), T.CenterCrop(28)])
  expected = np.asarray(reference(Image.fromarray(source)))
  assert out['image'].shape == (28, 28, 3) and out['image'].dtype == np.uint8
  np.testing.assert_array_equal(out['image'], expected)
  assert out['label'] == 3 and out['index'] == 17


def test_resize_center_crop_rejects_crop_larger_than_resize():
  with pytest.raises(ValueError, match='crop'):
    transforms.ResizeCenterCrop(resize=32, crop=64)


@pytest.mark.parametrize('shape', [(120, 160), (160, 120)])
def test_resize_random_crop_view_equals_torchvision_with_the_same_draws(image, shape):
  """Relative Location's host view: torchvision Resize(100) (shorter side) + RandomCrop(87), crop box replayed."""
  img = np.asarray(Image.fromarray(image).resize(shape[::-1]))
  transform = transforms.RandomResizedCropViews([dict(resize=100, size=87, flip_prob=0., num=4)])
  out = transform.random_map(record(img), np.random.default_rng(3))
  rng = np.random.default_rng(3)
  resized = TF.resize(Image.fromarray(img), 100, T.InterpolationMode.BILINEAR)
  assert min(resized.size) == 100
  boxes = []
  for view in out['views']:
    top = int(rng.integers(0, resized.height - 87 + 1))
    left = int(rng.integers(0, resized.width - 87 + 1))
    boxes.append((top, left))
    assert rng.random() >= 0.  # the flip coin is drawn after every crop, as for random-resized views
    np.testing.assert_array_equal(view, np.asarray(TF.crop(resized, top, left, 87, 87)))
  assert len(set(boxes)) == 4  # four different crops


def test_resize_random_crop_view_rejects_bad_specs():
  with pytest.raises(ValueError, match='resize >= size'):
    transforms.RandomResizedCropViews([dict(resize=30, size=33)])
  with pytest.raises(ValueError, match='no scale/ratio'):
    transforms.RandomResizedCropViews([dict(resize=40, size=33, scale=(0.2, 1.))])
