"""On-device random erasing against timm's RandomErasing (same boxes given the same draws, same statistics)."""
import functools
import math
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl.data import augment

torch = pytest.importorskip('torch')
timm_erasing = pytest.importorskip('timm.data.random_erasing')


class ScriptedDraws:
  """Stands in for timm's `random` module: replays one sample's uniforms the way our sampler reads them."""

  def __init__(self, row):
    self.apply, self.tries, self.positions = row[0], list(row[1:-2]), list(row[-2:])

  def random(self):
    return self.apply

  def uniform(self, low, high):
    return low + (high - low) * self.tries.pop(0)

  def randint(self, low, high):
    return low + min(int(self.positions.pop(0) * (high - low + 1)), high - low)


def timm_box(row, height, width, prob, **kwargs):
  """The box timm erases (top, left, h, w; zeros if none) given the draws in `row`."""
  eraser = timm_erasing.RandomErasing(probability=prob, mode='const', device='cpu', **kwargs)
  img = torch.ones(1, height, width)
  draws = ScriptedDraws(row)
  saved = timm_erasing.random
  timm_erasing.random = draws
  try:
    eraser(img)
  finally:
    timm_erasing.random = saved
  erased = np.argwhere(img[0].numpy() == 0)
  if not len(erased):
    return 0, 0, 0, 0
  (top, left), (bottom, right) = erased.min(0), erased.max(0)
  assert len(erased) == (bottom - top + 1) * (right - left + 1)  # one full rectangle
  return top, left, bottom - top + 1, right - left + 1


@pytest.mark.parametrize('height, width, kwargs', [(16, 20, {}), (4, 40, {}), (9, 9, dict(min_area=0.1, max_area=0.6,
                                                                                              min_aspect=0.5))])
def test_boxes_equal_timm_given_the_same_draws(height, width, kwargs):
  # (4, 40): most tries are too tall, so the 10-try rejection (and "no erase") decides many boxes.
  count, prob = 300, 0.7
  uniforms = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (count, 2 * augment.ERASE_ATTEMPTS + 3)))
  boxes = jax.jit(functools.partial(augment.erasing_boxes, height=height, width=width, **kwargs))(uniforms[:, 1:])
  top, left, h, w = (np.asarray(b) for b in boxes)
  apply = uniforms[:, 0] < prob
  ours = [(t, l, hh, ww) if a and hh * ww else (0, 0, 0, 0) for t, l, hh, ww, a in zip(top, left, h, w, apply)]
  theirs = [timm_box(row, height, width, prob, **kwargs) for row in uniforms]
  assert ours == theirs
  if (height, width) == (4, 40):  # some samples drawn for erasing found no try that fits
    assert any(a and b == (0, 0, 0, 0) for a, b in zip(apply, ours))


def erase_const(key, images, prob):
  return augment.random_erasing(key, images, prob=prob, mode='const')


@pytest.mark.parametrize('height, width', [(12, 12), (3, 60)])
def test_erased_area_distribution_matches_timm(height, width):
  count, prob = 3000, 0.6
  random.seed(0)
  torch.manual_seed(0)
  reference = timm_erasing.RandomErasing(probability=prob, mode='const', device='cpu')(torch.ones(count, 1, height,
                                                                                                   width))
  reference = 1 - reference[:, 0].numpy()  # 1 where erased
  images = jnp.ones((count, height, width, 1))
  out = jax.jit(erase_const, static_argnames='prob')(jax.random.PRNGKey(3), images, prob=prob)
  ours = 1 - np.asarray(out)[..., 0]

  def stats(erased):
    rows, cols = erased.any(2).sum(1), erased.any(1).sum(1)
    hit = rows > 0
    return dict(rate=hit.mean(), fraction=erased.mean((1, 2)), h=rows[hit], w=cols[hit])

  ours, reference = stats(ours), stats(reference)
  # tolerances: 4 standard errors of the difference of two independent means
  assert abs(ours['rate'] - reference['rate']) < 4 * math.sqrt(2 * prob * (1 - prob) / count)
  for name in ('fraction', 'h', 'w'):
    se = math.sqrt(ours[name].var() / len(ours[name]) + reference[name].var() / len(reference[name]))
    assert abs(ours[name].mean() - reference[name].mean()) < 4 * se, name
  if (height, width) == (3, 60):
    assert reference['rate'] < prob - 0.2  # most tries are too tall: the 10-try rejection rule decides the rate


@pytest.fixture(scope='module')
def erased_pixel_mode():
  images = jnp.full((512, 16, 20, 3), 5.0)
  fn = jax.jit(functools.partial(augment.random_erasing, prob=0.5, mode='pixel'))
  return np.asarray(images), np.asarray(fn(jax.random.PRNGKey(0), images))


def test_erased_boxes_within_bounds_and_outside_untouched(erased_pixel_mode):
  images, out = erased_pixel_mode
  height, width, area = 16, 20, 16 * 20
  changed = (out != images).any(-1)
  erased = 0
  for mask, img, o in zip(changed, images, out):
    if not mask.any():
      np.testing.assert_array_equal(o, img)
      continue
    erased += 1
    (top, left), (bottom, right) = np.argwhere(mask).min(0), np.argwhere(mask).max(0)
    h, w = bottom - top + 1, right - left + 1
    assert mask.sum() == h * w and h < height and w < width
    # h, w are rounded from sqrt(a * r), sqrt(a / r): |h w - a| <= (h + w) / 2 + 3 / 4
    slack = (h + w) / 2 + 0.75
    assert 0.02 * area - slack <= h * w <= area / 3 + slack
    assert (h + 0.5) / (w - 0.5) >= 0.3 and (h - 0.5) / (w + 0.5) <= 1 / 0.3
    outside = ~mask
    np.testing.assert_array_equal(o[outside], img[outside])
  assert abs(erased / len(images) - 0.5) < 0.07


def test_erased_pixels_are_standard_normal(erased_pixel_mode):
  images, out = erased_pixel_mode
  values = out[out != images]
  assert values.size > 10000
  assert abs(values.mean()) < 0.03 and abs(values.std() - 1) < 0.03
  assert abs(np.mean(np.abs(values) < 1) - 0.6827) < 0.02


def test_rand_and_const_modes_and_prob():
  images = jnp.full((64, 10, 10, 3), 5.0)
  out = np.asarray(jax.jit(functools.partial(augment.random_erasing, prob=1.0, mode='rand'))(
      jax.random.PRNGKey(1), images))
  for o in out:
    erased = o[(o != 5.0).any(-1)]
    if len(erased):  # one colour per sample
      np.testing.assert_array_equal(erased, np.broadcast_to(erased[0], erased.shape))
  assert (out != 5.0).any((1, 2, 3)).mean() > 0.9
  none = augment.random_erasing(jax.random.PRNGKey(1), images, prob=0.0)
  np.testing.assert_array_equal(none, images)
  const = np.asarray(augment.random_erasing(jax.random.PRNGKey(1), images, prob=1.0, mode='const'))
  assert set(np.unique(const)) == {0.0, 5.0}
  with pytest.raises(ValueError, match="RandomErasing mode 'noise'"):
    augment.random_erasing(jax.random.PRNGKey(1), images, mode='noise')


def test_build_augment_erases_after_normalizing():
  images = np.full((256, 8, 8, 3), 255, np.uint8)
  mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  fn = jax.jit(augment.build_augment([dict(type='Solarize', threshold=2.0, prob=1.0),
                                      dict(type='RandomErasing', prob=1.0)], mean=mean, std=std))
  out = np.asarray(fn(jax.random.PRNGKey(0), images))
  kept = out == 2.0  # (1 - 0.5) / 0.25
  assert kept.mean() < 0.95
  values = out[~kept]
  # noise drawn on normalized images stays N(0, 1); had it been normalized afterwards its std would be 4
  assert abs(values.std() - 1) < 0.05 and abs(values.mean()) < 0.05
  with pytest.raises(ValueError, match="'Solarize' works on \\[0, 1\\] images and must come before 'RandomErasing'"):
    augment.build_augment([dict(type='RandomErasing'), dict(type='Solarize')])
  with pytest.raises(TypeError, match="'RandomErasing'.*probability"):
    augment.build_augment([dict(type='RandomErasing', probability=0.25)])
