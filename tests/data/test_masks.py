import jax
import numpy as np

import pytest

from jssl.data.masks import block_masking, random_masking, simmim_masking


def test_random_masking_counts_and_consistency():
  b, n = 5, 49
  for ratio in (0.75, 0.5, 0.9):
    ids_keep, mask, ids_restore = map(np.asarray, random_masking(jax.random.key(3), b, n, ratio))
    keep = int(n * (1 - ratio))
    assert ids_keep.shape == (b, keep)
    np.testing.assert_array_equal(mask.sum(1), n - keep)           # exactly n - keep masked per sample
    for i in range(b):
      assert len(set(ids_keep[i])) == keep
      np.testing.assert_array_equal(mask[i, ids_keep[i]], 0)      # kept patches are the unmasked ones
      np.testing.assert_array_equal(np.sort(ids_restore[i]), np.arange(n))


def test_random_masking_differs_per_sample_and_key():
  _, m1, _ = random_masking(jax.random.key(0), 4, 16, 0.75)
  _, m2, _ = random_masking(jax.random.key(1), 4, 16, 0.75)
  m1, m2 = np.asarray(m1), np.asarray(m2)
  assert not np.array_equal(m1, m2)
  assert len({tuple(r) for r in m1}) > 1


def test_simmim_mask_counts_blocks_and_frequencies():
  # the reference's recipe: 192 px, 32-px mask patches over 4-px tokens, ratio 0.6 -> ceil(36 * 0.6) = 22 of 36
  masks = np.asarray(simmim_masking(jax.random.key(0), 512, 192, 32, 4, 0.6))
  assert masks.shape == (512, 48, 48)
  coarse = masks[:, ::8, ::8]
  assert np.all(coarse.reshape(512, -1).sum(1) == 22)
  np.testing.assert_array_equal(np.repeat(np.repeat(coarse, 8, 1), 8, 2), masks)  # constant on 8 x 8 tokens
  assert len({m.tobytes() for m in coarse}) == 512
  np.testing.assert_allclose(coarse.mean(0), 22 / 36, atol=0.09)  # uniform over positions
  with pytest.raises(ValueError, match='mask_patch_size 30'):
    simmim_masking(jax.random.key(0), 1, 192, 30, 4, 0.6)


@pytest.mark.parametrize('num,min_num', [(75, 4), (78, 15)])  # BEiT/CAE's 75 of 196; MaskFeat's 40% with blocks >= 15
def test_block_mask_counts_and_statistics_match_beit_mask_generator(num, min_num):
  processing = pytest.importorskip('mmpretrain.datasets.transforms.processing')
  masks = np.asarray(block_masking(jax.random.key(1), 256, 14, 14, num, min_num_patches=min_num))
  assert masks.shape == (256, 14, 14) and set(np.unique(masks)) == {0., 1.}
  assert np.all(masks.reshape(256, -1).sum(1) == num)
  assert not masks[:, -1, :].any() and not masks[:, :, -1].any()  # the reference never reaches the last row/col
  np.random.seed(0)
  gen = processing.BEiTMaskGenerator(input_size=14, num_masking_patches=num, min_num_patches=min_num)
  ref = np.stack([gen.transform({})['mask'] for _ in range(256)]).astype(np.float32)
  # the same sampling process: per-position frequencies and the number of masked rows per sample agree
  assert np.abs(masks.mean(0) - ref.mean(0)).max() < 0.15
  rows = lambda m: (m.sum(2) > 0).sum(1).mean()
  assert abs(rows(masks) - rows(ref)) < 0.5, (rows(masks), rows(ref))


def test_block_mask_rejects_impossible_counts():
  for num in (0, 170):  # 13 x 13 = 169 patches are reachable
    with pytest.raises(ValueError, match='1..169 for a 14 x 14 grid'):
      block_masking(jax.random.key(0), 1, 14, 14, num)
