"""Gradient accumulation (`config.optimizer.grad_accum_steps`, optax.MultiSteps): k micro-steps on micro-batches
of config.batch_size make one optimizer step with the mean of their gradients, at the lr of that optimizer step.

Each micro-step draws its own MAE masks (the step's key is fold_in(rng, micro-step)), so the reference is built
by hand: the gradients of `method.loss` for each micro-batch with the key the train step uses, averaged, then
one update of the accumulation-free optimizer over the same schedule."""
import jax
import numpy as np
import optax
import pytest

from jssl.config import load_config_file
from jssl.data.loader import to_global
from jssl.train.loop import Trainer, steps_for
from tests.conftest import apply_overrides
from tests.methods.test_mae import DEVICES as MAE_SMALL

BATCH = 8


def mae_config(accum):
  c = load_config_file('configs/mae.py:demo')
  apply_overrides(c, {**MAE_SMALL, 'backbone.kwargs.depth': 1})
  # SGD with momentum and weight decay: the update is linear in the gradient (Adam's first steps are about
  # sign(g), blind to the scale of a wrong mean); a warmup makes the lr differ between optimizer steps
  c.optimizer.update({'name': 'sgd', 'lr': 0.5, 'momentum': 0.9, 'weight_decay': 1e-2, 'grad_accum_steps': accum})
  c.schedule.update({'name': 'cosine', 'warmup_epochs': 1., 'warmup_start_factor': 0.3})
  c.epochs = 2
  c.batch_size = BATCH // accum  # config.batch_size is the micro-batch
  return c


def micro_grads_fn(trainer):
  """(params, state, batch, step) -> the gradients the train step computes at micro-step `step` (the same
  augmentation and loss keys)."""
  return jax.jit(lambda *a: _micro_grads(trainer, *a))


def _micro_grads(trainer, params, state, batch, step):
  rng = jax.random.fold_in(state.rng, step)
  aug_rng, loss_rng = jax.random.split(rng)
  keys = jax.random.split(aug_rng, len(trainer.augment_fns))
  batch = {**batch, 'views': tuple(fn(k, v) for fn, k, v in zip(trainer.augment_fns, keys, batch['views']))}
  loss = lambda p: trainer.method.loss(p, state.model_state, state.method_state, batch, loss_rng, step)[0]
  return jax.grad(loss)(params)


@pytest.mark.slow
def test_two_micro_batches_make_one_step_on_their_mean_gradient():
  num_records = 4 * BATCH  # 4 optimizer steps an epoch, the first of them warmup
  accum, plain = Trainer(mae_config(2), None, num_records=num_records), Trainer(mae_config(1), None,
                                                                                num_records=num_records)
  # micro-steps count the loop's steps; the schedule counts optimizer steps, the same as without accumulation
  assert steps_for(accum.config, num_records) == (8, 16) and steps_for(plain.config, num_records) == (4, 8)
  for k in range(8):
    assert float(accum.schedule(k)) == float(plain.schedule(k))
  assert float(plain.schedule(0)) < float(plain.schedule(1))

  rng = np.random.default_rng(0)
  size = accum.config.data.views[0]['size']
  halves = [{'views': (rng.integers(0, 256, (BATCH // 2, size, size, 3), dtype=np.uint8),)} for _ in range(4)]
  state = accum.init_state(jax.random.PRNGKey(0))
  ref_params = jax.tree.map(np.array, state.params)  # host copies: the train step donates the state
  ref_opt = plain.tx.init(ref_params)
  ref_update = jax.jit(plain.tx.update)
  micro_grads = micro_grads_fn(accum)
  for opt_step in range(2):  # two optimizer steps: the momentum and the second lr come in
    grads = [micro_grads(ref_params, state, halves[2 * opt_step + i], 2 * opt_step + i) for i in range(2)]
    mean = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
    updates, ref_opt = ref_update(mean, ref_opt, ref_params)
    before = jax.tree.map(np.array, state.params)
    state, _ = accum.train_step(state, to_global(halves[2 * opt_step], accum.mesh))
    jax.tree.map(np.testing.assert_array_equal, state.params, before)  # the first micro-step only accumulates
    state, _ = accum.train_step(state, to_global(halves[2 * opt_step + 1], accum.mesh))
    new_ref = optax.apply_updates(ref_params, updates)
    # compare the updates, not the params: an update of 1e-4 in a weight of 1 would hide in a params tolerance
    jax.tree.map(lambda got, want, p: np.testing.assert_allclose(got - p, want - p, rtol=2e-4, atol=1e-7),
                 state.params, new_ref, ref_params)
    ref_params = new_ref
  assert int(state.step) == 4
