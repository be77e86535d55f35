import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.relative_loc import get_config
from jssl.methods import relative_loc

torch = pytest.importorskip('torch')

SMALL = {'backbone.kwargs.num_filters': 8, 'model.neck_out_channels': 16}
# label -> (row, column) of the neighbour in the 3 x 3 grid, written out by hand: raster order without the centre
LABEL_CELLS = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]


def coordinate_images(batch, size):
  """Channel 0 = row, channel 1 = column, channel 2 = image index: every pixel says where it came from."""
  rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing='ij')
  return np.stack([np.stack([rows, cols, np.full_like(rows, b)], -1) for b in range(batch)]).astype(np.float32)


def test_patch_grid_geometry_jitter_range_and_pair_labels_by_hand():
  size, patch = 255, 64                       # the reference: cells of 85, jitter 0..21
  images = coordinate_images(2, size)
  seen_offsets = set()
  for seed in range(40):
    patches = np.asarray(relative_loc.patch_grid(jax.random.key(seed), jnp.asarray(images), patch))
    assert patches.shape == (2, 9, patch, patch, 3)
    for b in range(2):
      for cell in range(9):
        row, col = divmod(cell, 3)
        top, left = int(patches[b, cell, 0, 0, 0]), int(patches[b, cell, 0, 0, 1])
        assert 0 <= top - 85 * row <= 21 and 0 <= left - 85 * col <= 21, (row, col, top, left)
        np.testing.assert_array_equal(patches[b, cell], images[b, top:top + patch, left:left + patch])
        seen_offsets.add((top - 85 * row, left - 85 * col))
  assert {o for o, _ in seen_offsets} == set(range(22)) and {o for _, o in seen_offsets} == set(range(22))

  neighbours, centres, labels = relative_loc.pairs(jnp.asarray(patches))
  np.testing.assert_array_equal(labels, list(range(8)) * 2)
  for b in range(2):
    np.testing.assert_array_equal(centres[b], patches[b, 4])
    assert 85 <= centres[b][0, 0, 0] <= 85 + 21 and 85 <= centres[b][0, 0, 1] <= 85 + 21
    for label, (row, col) in enumerate(LABEL_CELLS):
      pair = neighbours[8 * b + label]
      assert pair[0, 0, 2] == b  # image-major: an image's 8 pairs side by side
      assert 85 * row <= pair[0, 0, 0] <= 85 * row + 21 and 85 * col <= pair[0, 0, 1] <= 85 * col + 21
  with pytest.raises(ValueError, match='config.model.patch_size'):
    relative_loc.patch_grid(jax.random.key(0), jnp.zeros((1, 30, 30, 3)), 11)


def test_loss_and_gradients_equal_a_torch_transcription_of_mmselfsup_relative_loc():
  """Same weights and patches in torch: mmpretrain's ResNet on the 8N neighbours and on the 8x repeated centres
  (two forwards, as MMSelfSup's RelativeLoc), concatenation [neighbour, centre], fc -> BN1d -> ReLU -> fc,
  cross-entropy. Dropout off here (its mask cannot be shared); it is checked separately below.

  The reference runs in float64, so the comparison measures jax's float32 rounding only. 8-px patches reach layer3/4
  as 1x1 maps where a pre-activation near a ReLU kink can flip with rounding: with 3 images, fp32 gradients of some
  seeds differ from float64 by 1e-3 to 0.8 (it failed CI on another CPU); with these 6 images seeds 0-3 all agree
  within 2e-5."""
  from tests import parity
  c = get_config('demo')
  c.backbone.kwargs.num_filters = 8
  c.model.neck_out_channels = 16
  c.model.neck_dropout = 0.
  method = relative_loc.Method(c)
  views = np.random.default_rng(0).normal(size=(6, 33, 33, 3)).astype(np.float32)
  batch = {'views': (jnp.asarray(views),)}
  params, model_state, method_state = method.init(jax.random.key(0), batch)
  loss_fn = lambda p: method.loss(p, model_state, method_state, batch, jax.random.key(1), 0)
  (loss, (metrics, new_state, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  patch_key, _ = jax.random.split(jax.random.key(1))
  patches = np.asarray(relative_loc.patch_grid(patch_key, jnp.asarray(views), 8))   # the patches the loss used

  backbone = parity.build_mmpretrain(parity.mmpretrain_resnet('resnet18', {'num_filters': 8}))
  backbone.load_state_dict(parity.resnet_state(params['backbone'], model_state['batch_stats']['backbone'], 'resnet18',
                                               {'num_filters': 8}))
  fc, bn, fc_cls = torch.nn.Linear(128, 16), torch.nn.BatchNorm1d(16, momentum=0.003), torch.nn.Linear(16, 8)
  for module, p in ((fc, params['neck']['fc']), (fc_cls, params['head']['fc_cls'])):
    module.weight.data = torch.tensor(np.asarray(p['kernel']).T.copy())
    module.bias.data = torch.tensor(np.asarray(p['bias']))
  bn.weight.data = torch.tensor(np.asarray(params['neck']['bn']['scale']))
  bn.bias.data = torch.tensor(np.asarray(params['neck']['bn']['bias']))
  for module in (backbone, fc, bn, fc_cls):
    module.double()
  nchw = lambda x: torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float64))
  neighbours = nchw(patches[:, [0, 1, 2, 3, 5, 6, 7, 8]].reshape(48, 8, 8, 3))
  centres = nchw(np.repeat(patches[:, 4], 8, axis=0))
  x1, x2 = backbone(neighbours)[-1], backbone(centres)[-1]
  x = torch.cat((x1, x2), dim=1).mean(dim=(2, 3))
  logits = fc_cls(torch.relu(bn(fc(x))))
  ref_loss = torch.nn.functional.cross_entropy(logits, torch.arange(8).repeat(6))
  ref_loss.backward()
  np.testing.assert_allclose(loss, ref_loss.item(), rtol=1e-5)
  # the repeat-vs-once equivalence itself is exact (float64 test below)
  parity.assert_grads_close(grads['backbone']['conv1']['kernel'],
                            parity.first_conv_grad_to_jssl(backbone.conv1.weight.grad), rtol=2e-4)
  parity.assert_grads_close(grads['neck']['fc']['kernel'], fc.weight.grad.numpy().T)
  parity.assert_grads_close(grads['head']['fc_cls']['kernel'], fc_cls.weight.grad.numpy().T)
  # running means updated twice per step (neighbours, then centres), as the reference's two forwards
  np.testing.assert_allclose(new_state['batch_stats']['backbone']['bn1']['mean'], backbone.bn1.running_mean.numpy(),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new_state['batch_stats']['neck']['bn']['mean'], bn.running_mean.numpy(), rtol=1e-4,
                             atol=1e-7)


def test_centres_once_equal_centres_repeated_8x_in_float64():
  """The method runs the backbone once on the N centres where MMSelfSup runs it on 8N repeated copies: same BN batch
  statistics, so the same loss and gradients (float64 torch, so that only rounding could differ)."""
  from tests import parity
  grads = []
  for repeat in (True, False):
    torch.manual_seed(0)
    backbone = parity.build_mmpretrain(parity.mmpretrain_resnet('resnet18', {'num_filters': 8})).double()
    fc = torch.nn.Linear(128, 8).double()
    generator = torch.Generator().manual_seed(1)
    neighbours = torch.randn(24, 3, 8, 8, generator=generator, dtype=torch.float64)
    centres = torch.randn(3, 3, 8, 8, generator=generator, dtype=torch.float64)
    x2 = backbone(centres.repeat_interleave(8, 0))[-1] if repeat else backbone(centres)[-1].repeat_interleave(8, 0)
    x = torch.cat((backbone(neighbours)[-1], x2), 1).mean((2, 3))
    torch.nn.functional.cross_entropy(fc(x), torch.arange(8).repeat(3)).backward()
    grads.append(backbone.conv1.weight.grad.numpy().copy())
  parity.assert_grads_close(grads[1], grads[0], rtol=1e-10)


def test_neck_dropout_and_init():
  c = get_config('demo')
  c.backbone.kwargs.num_filters = 8
  method = relative_loc.Method(c)
  views = jnp.asarray(np.random.default_rng(0).normal(size=(2, 33, 33, 3)), jnp.float32)
  params, model_state, _ = method.init(jax.random.key(0), {'views': (views,)})
  features = jnp.asarray(np.random.default_rng(1).normal(size=(16, 128)), jnp.float32)
  neck_vars = {'params': params['neck'], 'batch_stats': model_state['batch_stats']['neck']}
  neck = lambda key: method.net.neck.apply(neck_vars, features, train=True, mutable=['batch_stats'],
                                           rngs={'dropout': key})[0]
  a, b = np.asarray(neck(jax.random.key(0))), np.asarray(neck(jax.random.key(1)))
  kept = a != 0
  assert not np.array_equal(a != 0, b != 0)          # a fresh mask per key
  # after BN + ReLU about half the units are positive; dropout keeps about half of those, scaled by 2
  assert 0.15 < kept.mean() < 0.35
  no_dropout = relative_loc.RelativeLocNeck(out_channels=c.model.neck_out_channels, dropout_rate=0.)
  y = np.asarray(no_dropout.apply(neck_vars, features, train=True, mutable=['batch_stats'])[0])
  np.testing.assert_allclose(a, np.where(kept, 2 * y, 0), rtol=1e-6)   # inverted dropout, p = 0.5
  assert abs(np.asarray(params['neck']['fc']['kernel']).std() - 0.01) < 0.002
  assert abs(np.asarray(params['head']['fc_cls']['kernel']).std() - 0.005) < 0.001
  assert method.extract(params, model_state, views[:, :32, :32]).shape == (2, 64)


def test_config_recipe_and_unknown_variant():
  c = get_config()
  assert (c.batch_size, c.epochs, c.optimizer.lr, c.optimizer.weight_decay) == (512, 70, 0.2, 1e-4)
  assert dict(c.optimizer.decay_mult) == {'neck': 5., 'head': 5.}
  assert c.data.views[0]['resize'] == 292 and c.data.views[0]['size'] == 255 and c.model.patch_size == 64
  assert c.schedule.name == 'step' and tuple(c.schedule.milestones) == (30, 50)
  with pytest.raises(ValueError, match="configs/relative_loc.py: unknown variant 'nope'; valid: demo"):
    get_config('nope')


# tests/methods/test_every_method.py: 1 vs 8 devices, kill-and-resume and the demo, made small by these
DEVICES = SMALL
RESUME = {**SMALL, 'batch_size': 64, 'total_steps': 30}
