import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.rotation_pred import get_config
from jssl.methods import rotation_pred

torch = pytest.importorskip('torch')

SMALL = {'backbone.kwargs.num_filters': 8}


def small_method():
  c = get_config('demo')
  c.backbone.kwargs.num_filters = 8
  return rotation_pred.Method(c)


def test_rotations_equal_torch_rot90_on_chw_with_labels_image_major():
  images = np.random.default_rng(0).normal(size=(3, 5, 5, 2)).astype(np.float32)
  rotated, labels = rotation_pred.rotations(jnp.asarray(images))
  assert rotated.shape == (12, 5, 5, 2)
  np.testing.assert_array_equal(labels, [0, 1, 2, 3] * 3)
  for i in range(3):
    chw = torch.from_numpy(images[i].transpose(2, 0, 1))
    for k in range(4):
      expected = torch.rot90(chw, k, dims=(1, 2)).numpy().transpose(1, 2, 0)
      np.testing.assert_array_equal(rotated[4 * i + k], expected)
  # counter-clockwise as displayed: the top row of label 1 is the original right column, read top to bottom
  np.testing.assert_array_equal(rotated[1][0], images[0][:, -1])
  with pytest.raises(ValueError, match='square'):
    rotation_pred.rotations(jnp.zeros((1, 4, 6, 3)))


def test_mmselfsup_1x_mmcv_imrotate_turns_clockwise_so_its_label_1_is_our_label_3():
  """Pins the convention difference stated in docs/methods/rotation_pred.md: MMSelfSup 1.x's RotationWithLabels
  uses mmcv.imrotate(img, 90 k), which is clockwise."""
  mmcv = pytest.importorskip('mmcv')
  image = np.random.default_rng(1).integers(0, 256, (6, 6, 3)).astype(np.uint8)
  rotated, _ = rotation_pred.rotations(jnp.asarray(image)[None])
  for k_mmcv, ours in ((1, 3), (2, 2), (3, 1)):
    np.testing.assert_array_equal(mmcv.imrotate(image, 90 * k_mmcv), rotated[ours])


def test_loss_and_gradients_equal_a_torch_transcription_of_mmselfsup_rotation_pred():
  """Same weights in mmpretrain's ResNet + a torch linear head; the torch side rotates with torch.rot90 on CHW
  (MMSelfSup's dataset), stacks image-major, BN in train mode, average pool, fc, cross-entropy."""
  from tests import parity
  method = small_method()
  images = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
  batch = {'views': (jnp.asarray(images),)}
  params, model_state, method_state = method.init(jax.random.key(0), batch)
  loss_fn = lambda p: method.loss(p, model_state, method_state, batch, jax.random.key(1), 0)
  (loss, (metrics, new_state, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)

  backbone = parity.build_mmpretrain(parity.mmpretrain_resnet('resnet18', {'num_filters': 8}))
  backbone.load_state_dict(parity.resnet_state(params['backbone'], model_state['batch_stats']['backbone'], 'resnet18',
                                               {'num_filters': 8}))
  fc = torch.nn.Linear(64, 4)
  fc.weight.data = torch.tensor(np.asarray(params['head']['fc_cls']['kernel']).T.copy())
  fc.bias.data = torch.tensor(np.asarray(params['head']['fc_cls']['bias']))
  x = parity.nhwc_to_torch(images)
  rotated = torch.stack([torch.stack([torch.rot90(img, k, dims=(1, 2)) for k in range(4)]) for img in x])
  logits = fc(backbone(rotated.reshape(12, 3, 32, 32))[-1].mean(dim=(2, 3)))
  ref_loss = torch.nn.functional.cross_entropy(logits, torch.arange(4).repeat(3))
  ref_loss.backward()
  np.testing.assert_allclose(loss, ref_loss.item(), rtol=1e-5)
  np.testing.assert_allclose(metrics['accuracy'], (logits.argmax(-1) == torch.arange(4).repeat(3)).float().mean(),
                             rtol=1e-6)
  parity.assert_grads_close(grads['backbone']['conv1']['kernel'],
                            parity.first_conv_grad_to_jssl(backbone.conv1.weight.grad))
  parity.assert_grads_close(grads['head']['fc_cls']['kernel'], fc.weight.grad.numpy().T)
  # BN statistics of the 12 rotated samples (SyncBN over the whole batch)
  np.testing.assert_allclose(new_state['batch_stats']['backbone']['bn1']['mean'], backbone.bn1.running_mean.numpy(),
                             rtol=1e-4, atol=1e-6)


def test_head_init_and_features():
  method = rotation_pred.Method(get_config())  # the reference: ResNet-50, 2048 -> 4
  shapes = jax.eval_shape(method.init, jax.random.key(0), {'views': (jnp.zeros((2, 64, 64, 3)),)})[0]
  assert shapes['head']['fc_cls']['kernel'].shape == (2048, 4)
  method = small_method()
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
  params, model_state, _ = method.init(jax.random.key(0), {'views': (images,)})
  kernel = np.asarray(params['head']['fc_cls']['kernel'])
  assert abs(kernel.std() - 0.01) < 0.002 and not params['head']['fc_cls']['bias'].any()  # Normal(0.01), bias 0
  assert method.extract(params, model_state, images).shape == (2, 64)


def test_config_recipe_and_unknown_variant():
  c = get_config()
  assert (c.batch_size, c.epochs, c.optimizer.lr, c.optimizer.weight_decay) == (128, 70, 0.2, 1e-4)
  assert c.schedule.name == 'step' and tuple(c.schedule.milestones) == (30, 50)
  assert (c.schedule.warmup_epochs, c.schedule.warmup_start_factor) == (5., 0.1)
  with pytest.raises(ValueError, match="configs/rotation_pred.py: unknown variant 'nope'; valid: demo"):
    get_config('nope')


# tests/methods/test_every_method.py: 1 vs 8 devices, kill-and-resume and the demo, made small by these
DEVICES = {**SMALL, 'data.views.0.size': 16}
RESUME = {**SMALL, 'data.views.0.size': 16, 'batch_size': 64, 'total_steps': 30}
