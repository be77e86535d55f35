"""On-device Mixup / CutMix against timm's Mixup(mode='batch') with the same lambda and box."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl.data import mix

torch = pytest.importorskip('torch')
timm_mixup = pytest.importorskip('timm.data.mixup')

NUM_CLASSES = 10
HEIGHT, WIDTH = 12, 10


class ScriptedNumpy:
  """Replays given draws for the np.random functions timm's Mixup calls."""

  def __init__(self, rands=(), betas=(), randints=()):
    self.rands, self.betas, self.randints = list(rands), list(betas), list(randints)

  def patch(self, monkeypatch):
    monkeypatch.setattr(np.random, 'rand', lambda *shape: self.rands.pop(0))
    monkeypatch.setattr(np.random, 'beta', lambda a, b, size=None: self.betas.pop(0))
    monkeypatch.setattr(np.random, 'randint', lambda low, high=None, size=None: self.randints.pop(0))

  def done(self):
    return not (self.rands or self.betas or self.randints)


def test_cutmix_box_and_corrected_lam_equal_timm(monkeypatch):
  rng = np.random.default_rng(0)
  # float32 lambdas (what the device draws), centres anywhere, near the borders included
  lams = np.concatenate([[0.0, 0.25, 0.5, 0.99, 1.0], rng.random(200)]).astype(np.float32)
  for lam in lams:
    cy, cx = int(rng.integers(HEIGHT)), int(rng.integers(WIDTH))
    script = ScriptedNumpy(randints=[cy, cx])
    with monkeypatch.context() as patch:
      script.patch(patch)
      (yl, yh, xl, xh), timm_lam = timm_mixup.cutmix_bbox_and_lam((4, 3, HEIGHT, WIDTH), float(lam))
    box = mix.cutmix_box(jnp.float32(lam), cy, cx, HEIGHT, WIDTH)
    assert tuple(np.asarray(box)) == (yl, yh, xl, xh), (lam, cy, cx)
    np.testing.assert_allclose(mix.box_lam(box, HEIGHT, WIDTH), timm_lam, rtol=1e-6)


@pytest.fixture(scope='module')
def batch():
  rng = np.random.default_rng(1)
  images = rng.normal(size=(6, HEIGHT, WIDTH, 3)).astype(np.float32)
  labels = np.array([3, 0, 9, 3, 5, 1])
  return images, labels


@functools.partial(jax.jit, static_argnames='num_classes')
def mix_batch(images, labels, lam, box, use_cutmix, num_classes):
  return mix.mix_images(images, lam, box, use_cutmix), mix.mix_targets(labels, num_classes, lam, 0.1)


@pytest.mark.parametrize('use_cutmix', [False, True])
@pytest.mark.parametrize('raw_lam', [0.13, 0.5, 0.8712])
def test_mixed_batch_equals_timm(batch, monkeypatch, use_cutmix, raw_lam):
  images, labels = batch
  raw_lam = float(np.float32(raw_lam))
  cy, cx = 9, 2  # the box is clipped at the left border for small lambdas
  script = ScriptedNumpy(rands=[0.0, 0.0 if use_cutmix else 0.9], betas=[raw_lam],
                        randints=[cy, cx] if use_cutmix else [])
  mixer = timm_mixup.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode='batch',
                           label_smoothing=0.1, num_classes=NUM_CLASSES)
  with monkeypatch.context() as patch:
    script.patch(patch)
    timm_images, timm_targets = mixer(torch.from_numpy(images).permute(0, 3, 1, 2).clone(), torch.from_numpy(labels))
  assert script.done()
  timm_images = timm_images.permute(0, 2, 3, 1).numpy()

  box = mix.cutmix_box(jnp.float32(raw_lam), cy, cx, HEIGHT, WIDTH)
  lam = mix.box_lam(box, HEIGHT, WIDTH) if use_cutmix else jnp.float32(raw_lam)
  out_images, targets = mix_batch(images, labels, lam, box, use_cutmix, num_classes=NUM_CLASSES)
  if use_cutmix:
    np.testing.assert_array_equal(out_images, timm_images)
    assert not np.array_equal(out_images, images)
  else:
    np.testing.assert_allclose(out_images, timm_images, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(targets, timm_targets.numpy(), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.sum(targets, axis=1), 1.0, rtol=1e-6)


def test_unmixed_batch_keeps_images_and_smooths_targets(batch):
  images, labels = batch
  out_images, targets = mix_batch(images, labels, jnp.float32(1), jnp.zeros(4, jnp.int32), False,
                                  num_classes=NUM_CLASSES)
  np.testing.assert_array_equal(out_images, images)
  expected = np.full((6, NUM_CLASSES), 0.01, np.float32)
  expected[np.arange(6), labels] = 0.91
  np.testing.assert_allclose(targets, expected, rtol=1e-6)


def timm_param_draws(count, prob, seed=0):
  """(lam, use_cutmix) of timm's batch-mode sampling + lambda correction, `count` times."""
  np.random.seed(seed)
  mixer = timm_mixup.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=prob, switch_prob=0.5, num_classes=NUM_CLASSES)
  draws = []
  for _ in range(count):
    lam, use_cutmix = mixer._params_per_batch()
    if use_cutmix:
      _, lam = timm_mixup.cutmix_bbox_and_lam((1, 3, HEIGHT, WIDTH), lam)
    draws.append((lam, use_cutmix))
  lams, cutmix = (np.array(v) for v in zip(*draws))
  return lams, cutmix


def test_sampled_params_match_timm_statistics():
  count, prob = 4000, 0.8
  sample = jax.jit(jax.vmap(functools.partial(mix.sample_params, height=HEIGHT, width=WIDTH, prob=prob)))
  lams, boxes, cutmix = (np.asarray(v) for v in sample(jax.random.split(jax.random.PRNGKey(0), count)))
  ref_lams, ref_cutmix = timm_param_draws(count, prob)
  untouched, ref_untouched = (lams == 1) & ~cutmix, (ref_lams == 1) & ~ref_cutmix
  assert abs(untouched.mean() - ref_untouched.mean()) < 0.04 and abs(untouched.mean() - (1 - prob)) < 0.03
  assert abs(cutmix.mean() - ref_cutmix.mean()) < 0.05 and abs(cutmix.mean() - prob / 2) < 0.03
  for ours, ref in [(lams[cutmix], ref_lams[ref_cutmix]), (lams[~cutmix & ~untouched], ref_lams[~ref_cutmix &
                                                                                                   ~ref_untouched])]:
    se = np.sqrt(ours.var() / len(ours) + ref.var() / len(ref))
    assert abs(ours.mean() - ref.mean()) < 4 * se
    assert abs(ours.std() - ref.std()) < 0.03
  # CutMix lambdas are the box's corrected ones; boxes lie inside the image
  box_areas = (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])
  np.testing.assert_allclose(lams[cutmix], 1 - box_areas[cutmix] / (HEIGHT * WIDTH), rtol=1e-6)
  assert np.all((0 <= boxes[:, 0]) & (boxes[:, 0] <= boxes[:, 1]) & (boxes[:, 1] <= HEIGHT))
  assert np.all((0 <= boxes[:, 2]) & (boxes[:, 2] <= boxes[:, 3]) & (boxes[:, 3] <= WIDTH))


def test_mixup_cutmix_jits_and_uses_sample_params(batch):
  images, labels = batch
  fn = jax.jit(mix.mixup_cutmix, static_argnames=('num_classes',))
  sample = jax.jit(functools.partial(mix.sample_params, height=HEIGHT, width=WIDTH))
  seen_cutmix = set()
  for seed in range(6):
    key = jax.random.PRNGKey(seed)
    out_images, targets = fn(key, images, labels, num_classes=NUM_CLASSES)
    lam, box, use_cutmix = sample(key)
    seen_cutmix.add(bool(use_cutmix))
    expected_images, expected_targets = mix_batch(images, labels, lam, box, use_cutmix, num_classes=NUM_CLASSES)
    np.testing.assert_array_equal(out_images, expected_images)
    np.testing.assert_array_equal(targets, expected_targets)
    np.testing.assert_allclose(np.sum(targets, axis=1), 1.0, rtol=1e-6)
  assert seen_cutmix == {False, True}
  only_mixup = mix.sample_params(jax.random.PRNGKey(0), HEIGHT, WIDTH, cutmix_alpha=0.0)
  only_cutmix = mix.sample_params(jax.random.PRNGKey(0), HEIGHT, WIDTH, mixup_alpha=0.0)
  assert not only_mixup[2] and only_cutmix[2]
  with pytest.raises(ValueError, match='mixup_alpha > 0 or cutmix_alpha > 0'):
    mix.sample_params(jax.random.PRNGKey(0), HEIGHT, WIDTH, mixup_alpha=0.0, cutmix_alpha=0.0)
