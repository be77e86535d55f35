"""On-device augmentations against torchvision.transforms.functional on float tensors."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jssl.data import augment

torch = pytest.importorskip('torch')
TF = pytest.importorskip('torchvision.transforms.functional')


@pytest.fixture(scope='module')
def image():
  """A real photo, small: float32 [48, 64, 3] in [0, 1]."""
  datasets = pytest.importorskip('sklearn.datasets')
  pil = Image.fromarray(datasets.load_sample_image('china.jpg')).resize((64, 48), Image.BILINEAR)
  return np.asarray(pil, dtype=np.float32) / 255.0


def torch_apply(fn, image, *args):
  out = fn(torch.from_numpy(image).permute(2, 0, 1), *args)
  return out.permute(1, 2, 0).numpy()


# Two batch shapes for all random-op tests: eager jax caches each op's compilation per shape, so reusing
# shapes keeps the file fast on a small CPU.
FEW, MANY = (16, 8, 8, 3), (2000, 4, 4, 3)


def random_images(shape, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), shape)


def batched(fn):
  """The per-image op over a batch with one shared factor, compiled once per shape."""
  return jax.jit(jax.vmap(fn, (0, None)))


brightness, contrast, saturation, hue = map(
    batched, (augment.adjust_brightness, augment.adjust_contrast, augment.adjust_saturation, augment.adjust_hue))

# Jitted per-image ops: the factor is traced, as it is under vmap in the random ops.
jit_ops = {name: jax.jit(getattr(augment, name))
           for name in ('adjust_brightness', 'adjust_contrast', 'adjust_saturation', 'adjust_hue', 'solarize')}
jit_blur = jax.jit(augment.gaussian_blur, static_argnums=1)


@pytest.mark.parametrize('factor', [0.0, 0.3, 1.0, 1.8])
def test_blend_ops_match_torchvision(image, factor):
  np.testing.assert_allclose(jit_ops['adjust_brightness'](image, factor),
                             torch_apply(TF.adjust_brightness, image, factor), atol=1e-5)
  np.testing.assert_allclose(jit_ops['adjust_contrast'](image, factor),
                             torch_apply(TF.adjust_contrast, image, factor), atol=1e-5)
  np.testing.assert_allclose(jit_ops['adjust_saturation'](image, factor),
                             torch_apply(TF.adjust_saturation, image, factor), atol=1e-5)


@pytest.mark.parametrize('hue_factor', [-0.5, -0.2, 0.0, 0.05, 0.33, 0.5])
def test_adjust_hue_matches_torchvision(image, hue_factor):
  np.testing.assert_allclose(jit_ops['adjust_hue'](image, hue_factor),
                             torch_apply(TF.adjust_hue, image, hue_factor), atol=1e-5)


def test_adjust_hue_handles_gray_and_black_pixels():
  # maxc == minc pixels take the no-NaN path of _rgb2hsv.
  image = np.array([[[0., 0., 0.], [1., 1., 1.], [.5, .5, .5], [1., 0., 0.]]], np.float32)
  out = jit_ops['adjust_hue'](image, 0.25)
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out, torch_apply(TF.adjust_hue, image, 0.25), atol=1e-6)


@pytest.mark.parametrize('sigma', [0.5, 2.0])
def test_gaussian_blur_matches_torchvision(image, sigma):
  np.testing.assert_allclose(jit_blur(image, 23, sigma),
                             torch_apply(TF.gaussian_blur, image, [23, 23], [sigma, sigma]), atol=1e-5)


def test_gaussian_blur_rejects_even_kernel(image):
  with pytest.raises(ValueError, match='odd'):
    augment.gaussian_blur(image, 4, 1.0)


def test_grayscale_and_solarize_match_torchvision(image):
  np.testing.assert_allclose(augment.rgb_to_grayscale(image),
                             torch_apply(TF.rgb_to_grayscale, image, 3), atol=1e-6)
  for threshold in (0.3, 0.5):
    np.testing.assert_allclose(jit_ops['solarize'](image, threshold),
                               torch_apply(TF.solarize, image, threshold), atol=1e-6)


def test_normalize():
  images = random_images(FEW)
  out = augment.normalize(images, (0.5, 0.4, 0.3), (0.2, 0.25, 0.5))
  np.testing.assert_allclose(out * np.array([0.2, 0.25, 0.5]) + np.array([0.5, 0.4, 0.3]), images, atol=1e-6)


def test_random_ops_with_prob_zero_are_identity():
  images = random_images(FEW)
  key = jax.random.PRNGKey(1)
  outs = [
      augment.random_color_jitter(key, images, 0.8, 0.8, 0.8, 0.2, prob=0.0),
      augment.random_grayscale(key, images, prob=0.0),
      augment.random_gaussian_blur(key, images, 0.1, 2.0, 5, prob=0.0),
      augment.random_solarize(key, images, 0.5, prob=0.0),
  ]
  for out in outs:
    np.testing.assert_array_equal(out, images)


def test_random_ops_with_prob_one_equal_deterministic_ops():
  images = random_images(FEW)
  key = jax.random.PRNGKey(2)
  cases = [
      (augment.random_color_jitter(key, images, brightness=(0.6, 0.6), prob=1.0),
       brightness(images, 0.6)),
      (augment.random_color_jitter(key, images, contrast=(1.5, 1.5), prob=1.0),
       contrast(images, 1.5)),
      (augment.random_color_jitter(key, images, saturation=(0.3, 0.3), prob=1.0),
       saturation(images, 0.3)),
      (augment.random_color_jitter(key, images, hue=(0.2, 0.2), prob=1.0),
       hue(images, 0.2)),
      (augment.random_grayscale(key, images, prob=1.0), jax.vmap(augment.rgb_to_grayscale)(images)),
      (augment.random_gaussian_blur(key, images, 1.5, 1.5, 5, prob=1.0),
       jax.vmap(augment.gaussian_blur, (0, None, None))(images, 5, 1.5)),
      (augment.random_solarize(key, images, 0.4, prob=1.0), augment.solarize(images, 0.4)),
  ]
  for out, expected in cases:
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_color_jitter_factor_ranges():
  # With a factor drawn per sample, brightness scales each (unclipped) image by a factor in [1 - b, 1 + b].
  images = 0.25 + 0.5 * random_images(MANY)
  out = augment.random_color_jitter(jax.random.PRNGKey(3), images, brightness=0.4)
  factors = np.asarray(out[:, 0, 0, 0] / images[:, 0, 0, 0])
  assert 0.6 - 1e-5 <= factors.min() < 0.65 and 1.35 < factors.max() <= 1.4 + 1e-5
  with pytest.raises(ValueError, match='hue'):
    augment.random_color_jitter(jax.random.PRNGKey(0), images, hue=0.6)


@pytest.mark.parametrize('prob', [0.2, 0.8])
def test_per_sample_application_rate(prob):
  images = random_images(MANY)
  key = jax.random.PRNGKey(4)
  outs = {
      'jitter': augment.random_color_jitter(key, images, brightness=(0.5, 0.5), prob=prob),
      'grayscale': augment.random_grayscale(key, images, prob=prob),
      'blur': augment.random_gaussian_blur(key, images, 1.0, 2.0, 3, prob=prob),
      'solarize': augment.random_solarize(key, images, 0.0, prob=prob),
  }
  for name, out in outs.items():
    rate = np.mean(np.any(np.asarray(out) != np.asarray(images), axis=(1, 2, 3)))
    assert abs(rate - prob) < 0.04, (name, rate)  # ~4.5 standard deviations at n=2000


def test_color_jitter_random_order():
  # Hue and contrast do not commute; each sample gets one of the two orders and both orders occur.
  images = random_images(MANY)
  out = augment.random_color_jitter(jax.random.PRNGKey(5), images, contrast=(1.6, 1.6), hue=(0.3, 0.3))
  contrast_first = np.all(np.isclose(out, hue(contrast(images, 1.6), 0.3), atol=1e-5), axis=(1, 2, 3))
  hue_first = np.all(np.isclose(out, contrast(hue(images, 0.3), 1.6), atol=1e-5), axis=(1, 2, 3))
  assert np.all(contrast_first | hue_first)
  assert 0.35 < contrast_first.mean() < 0.65 and 0.35 < hue_first.mean() < 0.65


def test_color_jitter_uses_every_order():
  # All four ops with fixed factors: every output is the result of some order, and all 24 orders occur.
  images = random_images(MANY)
  factors = {'brightness': 0.7, 'contrast': 1.5, 'saturation': 0.4, 'hue': 0.15}
  out = augment.random_color_jitter(jax.random.PRNGKey(6), images, **{k: (v, v) for k, v in factors.items()})
  ops = {'brightness': brightness, 'contrast': contrast, 'saturation': saturation, 'hue': hue}
  matches = []
  for order in itertools.permutations(factors):
    expected = images
    for name in order:
      expected = ops[name](expected, factors[name])
    matches.append(np.all(np.isclose(out, expected, atol=1e-5), axis=(1, 2, 3)))
  matches = np.stack(matches)  # [24 orders, B]
  assert np.all(matches.any(axis=0))
  assert np.all(matches.any(axis=1))


def test_pipeline_runs_under_jit():
  ops = [
      dict(type='ColorJitter', brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, prob=0.8),
      dict(type='RandomGrayscale', prob=0.2),
      dict(type='GaussianBlur', sigma_min=0.1, sigma_max=2.0, kernel_size=23, prob=0.5),
      dict(type='Solarize', threshold=0.5, prob=0.2),
  ]
  fn = jax.jit(augment.build_augment(ops))
  images = (255 * random_images(FEW)).astype(jnp.uint8)
  out = fn(jax.random.PRNGKey(1), images)
  assert out.shape == FEW and out.dtype == jnp.float32
  assert np.all(np.isfinite(out))
  assert not np.allclose(out, fn(jax.random.PRNGKey(2), images))


def test_pipeline_without_ops_converts_and_normalizes():
  images = np.full((1, 2, 2, 3), 255, np.uint8)
  out = augment.build_augment([], mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(jax.random.PRNGKey(0), images)
  np.testing.assert_allclose(out, np.ones((1, 2, 2, 3)))


def test_pipeline_accepts_config_dicts():
  ml_collections = pytest.importorskip('ml_collections')
  ops = [ml_collections.ConfigDict(dict(type='Solarize', threshold=0.0, prob=1.0))]
  images = np.zeros((1, 2, 2, 3), np.uint8)
  out = augment.build_augment(ops, mean=(0., 0., 0.), std=(1., 1., 1.))(jax.random.PRNGKey(0), images)
  np.testing.assert_allclose(out, np.ones((1, 2, 2, 3)))


def test_pipeline_errors():
  with pytest.raises(ValueError, match=r"Unknown augment type 'Blur'; valid types: ColorJitter, "):
    augment.build_augment([dict(type='Blur')])
  with pytest.raises(TypeError, match='probability'):
    augment.build_augment([dict(type='Solarize', probability=0.5)])


@pytest.mark.parametrize('shape', [(32, 32), (17, 24)])
@pytest.mark.parametrize('angle', [0.0, 1.3, -2.0, 30.0])
def test_rotate_nearest_matches_torchvision_rotate(shape, angle):
  img = np.random.default_rng(0).random(shape + (3,)).astype(np.float32)
  ref = TF.rotate(torch.from_numpy(img).permute(2, 0, 1), angle).permute(1, 2, 0).numpy()
  np.testing.assert_array_equal(np.asarray(augment.rotate_nearest(jnp.asarray(img), angle)), ref)


def test_random_rotation_draws_angles_within_degrees_per_sample():
  # a single bright pixel off-centre: its position after rotation tells the angle of each sample
  img = np.zeros((4, 33, 33, 3), np.float32)
  img[:, 16, 30] = 1.
  out = np.asarray(augment.random_rotation(jax.random.PRNGKey(0), jnp.asarray(img), degrees=10.))
  angles = []
  for o in out:
    y, x = np.argwhere(o[..., 0] > 0)[0]
    angles.append(np.degrees(np.arctan2(16 - y, x - 16)))   # counter-clockwise on screen
  assert all(abs(a) <= 10 + 4 for a in angles) and len(set(np.round(angles, 3))) > 1
  untouched = augment.random_rotation(jax.random.PRNGKey(0), jnp.asarray(img), degrees=10., prob=0.)
  np.testing.assert_array_equal(untouched, img)
