"""Shared layers against torch: the Sobel input layer of DeepCluster / ODC."""
import jax.numpy as jnp
import numpy as np
import pytest

from jssl.models import layers

torch = pytest.importorskip('torch')


def test_sobel_matches_mmselfsup_sobel_layer():
  # MMSelfSup's Sobel: Conv2d(3, 1, 1) with weight 1/3 and bias 0, then Conv2d(1, 2, 3, padding=1) with the two
  # Sobel kernels and bias 0
  images = np.random.default_rng(0).normal(size=(2, 9, 11, 3)).astype(np.float32)
  gray = torch.nn.Conv2d(3, 1, 1)
  gray.weight.data.fill_(1 / 3.)
  gray.bias.data.zero_()
  edges = torch.nn.Conv2d(1, 2, 3, padding=1)
  edges.weight.data[0, 0] = torch.tensor(layers.SOBEL_X)
  edges.weight.data[1, 0] = torch.tensor(layers.SOBEL_Y)
  edges.bias.data.zero_()
  with torch.no_grad():
    ref = edges(gray(torch.from_numpy(images).permute(0, 3, 1, 2))).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(layers.sobel(jnp.asarray(images)), ref, atol=1e-5)
