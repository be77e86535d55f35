import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jssl import optim


def cfg(**kw):
  return ml_collections.ConfigDict(kw)


def test_decay_mask_excludes_norms_biases_and_named():
  params = {'conv': {'kernel': jnp.ones((3, 3, 4, 4))}, 'bn': {'scale': jnp.ones(4), 'bias': jnp.ones(4)},
            'pos_embed': jnp.ones((1, 5, 4)), 'fc': {'kernel': jnp.ones((4, 4)), 'bias': jnp.ones(4)}}
  mask = optim.decay_mask(params, no_decay_names=('pos_embed',))
  assert mask == {'conv': {'kernel': True}, 'bn': {'scale': False, 'bias': False}, 'pos_embed': False,
                  'fc': {'kernel': True, 'bias': False}}


def test_warmup_cosine_schedule_values():
  s = optim.build_schedule(cfg(lr=1.0), cfg(name='cosine', warmup_epochs=2, warmup_start_factor=0.1, min_lr=0.01),
                           steps_per_epoch=5, total_steps=30)
  np.testing.assert_allclose(s(0), 0.1, rtol=1e-6)
  np.testing.assert_allclose(s(5), 0.1 + 0.9 * 5 / 10, rtol=1e-6)
  np.testing.assert_allclose(s(10), 1.0, rtol=1e-6)
  for step in (15, 22, 29):  # cosine from 1.0 to 0.01 over the 20 steps after warmup
    expected = 0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * (step - 10) / 20))
    np.testing.assert_allclose(s(step), expected, rtol=1e-5)


def test_step_schedule_matches_torch_multisteplr_and_counts_from_the_start_with_warmup():
  import torch
  s = optim.build_schedule(cfg(lr=0.03), cfg(name='step', milestones=(4, 6), gamma=0.1, warmup_epochs=0.),
                           steps_per_epoch=5, total_steps=40)
  opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.03)
  ref = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[20, 30], gamma=0.1)  # milestones in iterations
  for step in range(40):
    np.testing.assert_allclose(s(step), opt.param_groups[0]['lr'], rtol=1e-6, err_msg=str(step))
    opt.step()
    ref.step()
  warm = optim.build_schedule(cfg(lr=1.), cfg(name='step', milestones=(4,), gamma=0.5, warmup_epochs=2.,
                                              warmup_start_factor=0.), steps_per_epoch=5, total_steps=40)
  np.testing.assert_allclose([warm(5), warm(10), warm(19), warm(20)], [0.5, 1., 1., 0.5], rtol=1e-6)
  import pytest
  with pytest.raises(ValueError, match='config.schedule.milestones'):
    optim.build_schedule(cfg(lr=1.), cfg(name='step', milestones=(), warmup_epochs=0.), 5, 40)


def test_lars_excludes_1d_params_from_adaptation_and_decay():
  params = {'w': jnp.full((4, 4), 2.0), 'b': jnp.full((4,), 2.0)}
  grads = {'w': jnp.full((4, 4), 0.5), 'b': jnp.full((4,), 0.5)}
  tx = optim.build_optimizer(cfg(name='lars', lr=0.1, momentum=0.0, weight_decay=0.1), optax.constant_schedule(0.1),
                             params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # bias: plain SGD step, no decay, no trust ratio
  np.testing.assert_allclose(updates['b'], -0.1 * 0.5)
  # weight: g + wd w, scaled by eta |w| / |g + wd w|
  g = 0.5 + 0.1 * 2.0
  trust = 0.001 * np.linalg.norm(np.full((4, 4), 2.0)) / np.linalg.norm(np.full((4, 4), g))
  np.testing.assert_allclose(updates['w'], -0.1 * trust * g, rtol=1e-5)


def test_adamw_mask_and_accumulation():
  params = {'w': jnp.ones((2, 2)), 'cls_token': jnp.ones((1, 1, 2))}
  c = cfg(name='adamw', lr=0.1, betas=(0.9, 0.95), weight_decay=0.5, no_decay_names=('cls_token',),
          grad_accum_steps=2)
  tx = optim.build_optimizer(c, optax.constant_schedule(0.1), params)
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  u1, state = tx.update(zeros, state, params)
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(u1))  # first micro-step: no update
  u2, state = tx.update(zeros, state, params)
  np.testing.assert_allclose(u2['w'], -0.1 * 0.5)        # decoupled weight decay only
  np.testing.assert_allclose(u2['cls_token'], 0.)        # excluded from decay


def test_unknown_optimizer_error():
  import pytest
  with pytest.raises(ValueError, match="unknown optimizer 'adam'; valid: adamw, lars, sgd"):
    optim.build_optimizer(cfg(name='adam'), optax.constant_schedule(0.1), {'w': jnp.ones((2, 2))})


def test_fixed_lr_names_keep_the_base_lr_while_the_rest_follows_the_schedule():
  # SGD without momentum or decay: the update is -lr * g, so it shows the lr each group got at each step
  params = {'backbone': {'w': jnp.ones((2, 2))}, 'head': {'w': jnp.ones((2, 2)), 'b': jnp.ones(2)}}
  schedule = optax.linear_schedule(1.0, 0.0, 4)
  tx = optim.build_optimizer(cfg(name='sgd', lr=1.0, momentum=0.0, weight_decay=0.0, fixed_lr_names=('head',)),
                             schedule, params)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for step, lr in [(0, 1.0), (1, 0.75), (2, 0.5)]:
    updates, state = tx.update(grads, state, params)
    np.testing.assert_allclose(updates['backbone']['w'], -lr, err_msg=str(step))
    np.testing.assert_allclose(updates['head']['w'], -1.0, err_msg=str(step))
    np.testing.assert_allclose(updates['head']['b'], -1.0, err_msg=str(step))


def test_fixed_lr_names_with_lars_masks_and_weight_decay():
  params = {'backbone': {'w': jnp.full((2, 2), 2.0), 'b': jnp.ones(2)}, 'head': {'w': jnp.full((2, 2), 2.0)}}
  tx = optim.build_optimizer(cfg(name='lars', lr=0.1, momentum=0.9, weight_decay=0.1, fixed_lr_names=('head',)),
                             optax.constant_schedule(0.1), params)
  plain = optim.build_optimizer(cfg(name='lars', lr=0.1, momentum=0.9, weight_decay=0.1),
                                optax.constant_schedule(0.1), params)
  grads = jax.tree.map(lambda x: 0.5 * jnp.ones_like(x), params)
  # with a constant schedule both groups see the same lr: identical to the optimizer without groups
  u, _ = tx.update(grads, tx.init(params), params)
  u_plain, _ = plain.update(grads, plain.init(params), params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u, u_plain)


def test_lr_mult_names_scale_the_lr_of_those_parameters_only():
  # LARS with momentum: the update is linear in the lr, so a 10x lr multiplier gives 10x the update of the
  # plain optimizer for the named parameters, step after step (momentum trace included), and 1x elsewhere
  params = {'backbone': {'w': jnp.full((2, 2), 2.0), 'b': jnp.ones(2)}, 'head': {'w': jnp.full((2, 3), 1.5)}}
  schedule = optax.linear_schedule(0.2, 0.0, 5)
  tx = optim.build_optimizer(cfg(name='lars', lr=0.2, momentum=0.9, weight_decay=0.1, lr_mult_names=('head',),
                                 lr_mult=10.), schedule, params)
  plain = optim.build_optimizer(cfg(name='lars', lr=0.2, momentum=0.9, weight_decay=0.1), schedule, params)
  state, state_plain = tx.init(params), plain.init(params)
  for step in range(3):
    grads = jax.tree.map(lambda x: (step + 1) * 0.3 * jnp.ones_like(x), params)
    u, state = tx.update(grads, state, params)
    u_plain, state_plain = plain.update(grads, state_plain, params)
    np.testing.assert_allclose(u['head']['w'], 10 * u_plain['head']['w'], rtol=1e-6, err_msg=str(step))
    np.testing.assert_allclose(u['backbone']['w'], u_plain['backbone']['w'], rtol=1e-6, err_msg=str(step))
    np.testing.assert_allclose(u['backbone']['b'], u_plain['backbone']['b'], rtol=1e-6, err_msg=str(step))
  assert np.abs(u_plain['head']['w']).max() > 0


def test_no_momentum_names_use_plain_sgd_while_the_rest_keeps_momentum():
  params = {'backbone': {'w': jnp.ones((2, 2))}, 'head': {'w': jnp.ones((2, 2))}}
  tx = optim.build_optimizer(cfg(name='sgd', lr=0.1, momentum=0.9, weight_decay=0.0, no_momentum_names=('head',)),
                             optax.constant_schedule(0.1), params)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for step in range(3):
    updates, state = tx.update(grads, state, params)
  # constant gradient 1: with momentum 0.9 the third update is -0.1 * (1 + 0.9 + 0.81); without it -0.1
  np.testing.assert_allclose(updates['backbone']['w'], -0.1 * 2.71, rtol=1e-6)
  np.testing.assert_allclose(updates['head']['w'], -0.1, rtol=1e-6)


def test_sgd_decay_mult_matches_torch_param_groups():
  """MMSelfSup's paramwise custom_keys={'neck': dict(decay_mult=5.)}: torch SGD with a second param group at 5x wd."""
  import torch
  rng = np.random.default_rng(0)
  params = {'backbone': {'w': jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)},
            'neck': {'fc': {'kernel': jnp.asarray(rng.normal(size=(2, 2)), jnp.float32)},
                     'bn': {'bias': jnp.asarray(rng.normal(size=(2,)), jnp.float32)}}}
  grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
  c = cfg(name='sgd', lr=0.1, momentum=0.9, weight_decay=1e-2, exclude_1d_from_decay=False, decay_mult={'neck': 5.})
  tx = optim.build_optimizer(c, 0.1, params)
  state, p = tx.init(params), params
  names = [('backbone', 'w'), ('neck', 'fc', 'kernel'), ('neck', 'bn', 'bias')]
  get = lambda tree, path: tree[path[0]][path[1]] if len(path) == 2 else tree[path[0]][path[1]][path[2]]
  tp = {n: torch.nn.Parameter(torch.tensor(np.asarray(get(params, n)))) for n in names}
  opt = torch.optim.SGD([{'params': [tp[names[0]]]}, {'params': [tp[n] for n in names[1:]], 'weight_decay': 5e-2}],
                        lr=0.1, momentum=0.9, weight_decay=1e-2)
  for _ in range(3):
    updates, state = tx.update(grads, state, p)
    p = optax.apply_updates(p, updates)
    for n in names:
      tp[n].grad = torch.tensor(np.asarray(get(grads, n)))
    opt.step()
  for n in names:
    np.testing.assert_allclose(get(p, n), tp[n].detach().numpy(), rtol=1e-5, atol=1e-7, err_msg=str(n))
  import pytest
  with pytest.raises(ValueError, match='config.optimizer.decay_mult'):
    optim.build_optimizer(cfg(name='lars', lr=0.1, momentum=0.9, weight_decay=1e-6, decay_mult={'neck': 5.}), 0.1,
                          params)
