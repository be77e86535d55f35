"""Shared layers: the Sobel input layer of DeepCluster / ODC against torch; attention over chunks of heads."""
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


def test_attention_in_head_chunks_matches_all_heads():
  import jax
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 32)), jnp.float32)
  block = layers.Block(num_heads=8)
  chunked = layers.Block(num_heads=8, attention_head_chunks=4)
  variables = block.init(jax.random.key(0), x)
  loss = lambda m: lambda v: jnp.sum(m.apply(v, x) ** 2)
  np.testing.assert_array_equal(chunked.apply(variables, x), block.apply(variables, x))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               jax.grad(loss(chunked))(variables), jax.grad(loss(block))(variables))
  with pytest.raises(ValueError, match='head_chunks=3'):
    layers.Block(num_heads=8, attention_head_chunks=3).init(jax.random.key(0), x)
