"""NPID against a hand-written NumPy version of the paper's equations (mmpretrain 1.2 has no NPID): the loss over
[positive, sampled negatives] / T and the memory-bank update, on a small case; then 8 devices vs 1 (incl. the bank),
exact resume and the demo."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.npid import get_config
from jssl.methods import npid
from tests.parts.test_memory import numpy_bank_update

# the reference's lr 0.03: at the demo's 0.3, two SGD steps with gradients scaled by 1/T amplify the float32
# round-off of the 8-device reductions past the harness's 1e-4 on small BN parameters
SMALL = {'backbone.kwargs.num_filters': 8, 'model.neck_out_channels': 16, 'model.neg_num': 64, 'optimizer.lr': 0.03}


def numpy_npid_loss(f, bank, index, neg_idx, temperature):
  """Wu et al. (2018), eq. 2 with the reference's softmax over [positive, negatives]: for image i with unit feature
  f_i, P = exp(v_i.f_i / T) / (exp(v_i.f_i / T) + sum_j exp(v_j.f_i / T)); loss = mean_i -log P."""
  f = f.astype(np.float64)
  f = f / np.linalg.norm(f, axis=1, keepdims=True)
  bank = bank.astype(np.float64)
  total = 0.
  for i in range(len(f)):
    pos = np.exp(bank[index[i]] @ f[i] / temperature)
    neg = sum(np.exp(bank[j] @ f[i] / temperature) for j in neg_idx[i])
    total += -np.log(pos / (pos + neg))
  return total / len(f)


def small_method(num_records=40, **model):
  c = get_config('demo')
  c.backbone.kwargs.num_filters = 8
  c.model.neck_out_channels = 16
  c.model.neg_num = 64
  c.model.update(model)
  return npid.Method(c, num_records=num_records)


def test_npid_loss_and_memory_update_match_numpy():
  method = small_method()
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(6, 16, 16, 3)), jnp.float32)
  index = jnp.asarray([3, 17, 5, 17, 39, 0], jnp.int32)  # 17 twice: two views of one image in the batch
  batch = {'views': (images,), 'index': index}
  params, model_state, method_state = jax.jit(method.init)(jax.random.key(0), batch)
  bank = np.asarray(method_state['memory']['features'])
  assert bank.shape == (40, 16)
  np.testing.assert_allclose(np.linalg.norm(bank, axis=1), 1., rtol=1e-6)
  step_rng = jax.random.key(7)
  loss, (metrics, new_model_state, new_method_state) = jax.jit(method.loss)(
      params, model_state, method_state, batch, step_rng, 0)

  # the features the loss saw: the train-mode forward (BN over the batch), LinearNeck 8*8 -> 16
  f, _ = method.net.apply({'params': params, **model_state}, images, train=True, mutable=['batch_stats'])
  f = np.asarray(f)
  neg_idx = np.asarray(method.negatives(step_rng, index))
  assert neg_idx.shape == (6, 64) and neg_idx.min() >= 0 and neg_idx.max() < 40
  np.testing.assert_allclose(loss, numpy_npid_loss(f, bank, np.asarray(index), neg_idx, 0.07), rtol=1e-5)
  np.testing.assert_allclose(metrics['loss'], loss)
  # memory: rows of the batch <- normalize(0.5 row + 0.5 f), row 17 from the mean of its two features
  want = numpy_bank_update(bank, np.asarray(index), f, 0.5)
  # (the features here come from an un-jitted forward: float32 round-off of the convolutions)
  np.testing.assert_allclose(new_method_state['memory']['features'], want, rtol=1e-4, atol=2e-5)
  untouched = np.setdiff1d(np.arange(40), np.asarray(index))
  np.testing.assert_array_equal(np.asarray(new_method_state['memory']['features'])[untouched], bank[untouched])
  # gradients reach every parameter; after_step leaves the bank alone
  grads = jax.jit(jax.grad(lambda p: method.loss(p, model_state, method_state, batch, step_rng, 0)[0]))(params)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert np.abs(grads['neck']['fc']['kernel']).sum() > 0
  assert method.after_step(params, new_method_state, 0) is new_method_state
  assert method.extract(params, new_model_state, images).shape == (6, 8 * 8)


def test_ensure_neg_never_draws_the_image_itself():
  method = small_method(ensure_neg=True)
  neg = np.asarray(method.negatives(jax.random.key(2), jnp.arange(40)))
  assert not (neg == np.arange(40)[:, None]).any()


def test_bank_needs_the_dataset_size():
  method = small_method(num_records=0)
  batch = {'views': (jnp.zeros((2, 16, 16, 3)),), 'index': jnp.zeros((2,), jnp.int32)}
  with pytest.raises(ValueError, match='num_records'):
    method.init(jax.random.key(0), batch)


def test_config_is_the_reference_recipe():
  c = get_config()
  assert (c.batch_size, c.epochs, c.optimizer.lr, c.optimizer.weight_decay) == (256, 200, 0.03, 1e-4)
  assert c.schedule.name == 'step' and list(c.schedule.milestones) == [120, 160]
  assert (c.model.neg_num, c.model.temperature, c.model.memory_momentum) == (65536, 0.07, 0.5)
  assert c.data.views[0]['scale'] == (0.2, 1.0)
  with pytest.raises(ValueError, match='valid: demo'):
    get_config('nope')


# tests/methods/test_every_method.py: 1 vs 8 devices, kill-and-resume and the demo, made small by these
DEVICES = SMALL
METHOD_STATE_LEAVES = 1  # the bank
# batch 64: 22 steps per epoch of digits, so the 30-step run crosses an epoch boundary
RESUME = {**SMALL, 'batch_size': 64, 'total_steps': 30}
