"""HOG targets (MaskFeat) against mmpretrain's HOGGenerator on the same images."""
import jax.numpy as jnp
import numpy as np
import pytest

from jssl.models import hog

torch = pytest.importorskip('torch')
maskfeat = pytest.importorskip('mmpretrain.models.selfsup.maskfeat')


def test_hog_features_equal_mmpretrain_hog_generator():
  # normalized-image-like values at the reference's 224 px (its patch grid is hard-wired to 14 x 14)
  images = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)
  ref = maskfeat.HOGGenerator(nbins=9, pool=8, gaussian_window=16)(
      torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
  got = np.asarray(hog.hog_features(jnp.asarray(images)))
  assert got.shape == ref.shape == (2, 196, 108)
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_gaussian_window_and_orientation_bins_by_hand():
  w = hog.gaussian_window(16, 8)
  assert abs(w.sum() - 1) < 1e-6 and w[7, 7] == w.max() and np.allclose(w, w.T)
  # a horizontal ramp: gx = -8 per unit slope (kernel [1, 0, -1] weighted 1-2-1), gy = 0 -> atan2(-8, 0) = -pi/2,
  # bin floor(-4.5) mod 9 = 4; every cell's histogram is one-hot there after L2 normalization
  ramp = np.tile(np.arange(32, dtype=np.float32)[None, :, None], (32, 1, 3))[None]
  feats = np.asarray(hog.hog_features(jnp.asarray(ramp), patch_size=16)).reshape(1, 4, 3, 9, 2, 2)
  interior = feats[0, :, :, :, :, :]
  assert np.allclose(interior.sum(axis=2), 1.)  # one-hot over bins (the reflected border keeps the direction)
  assert np.allclose(interior[:, :, 4], 1.)


def test_sizes_that_do_not_tile_are_named():
  with pytest.raises(ValueError, match='multiple of the Gaussian window'):
    hog.hog_features(jnp.zeros((1, 40, 40, 3)))
