import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.cae import get_config
from jssl.methods import cae
from jssl.models.layers import get_2d_sincos_pos_embed
from tests.test_main import assert_one_line_error, run_main

# the parity model: a 2-block ViT, 32 wide, 2 heads, 8-px patches of 32-px images (4 x 4 patches, 6 masked),
# regressor 2 and decoder 1 blocks, a DALL-E encoder 8 wide with a 32-token vocabulary on 32-px tokenizer views
TINY = {'img_size': 32, 'patch_size': 8, 'embed_dim': 32, 'depth': 2, 'num_heads': 2}
VOCAB, MASKED = 32, 6


def tiny_config():
  c = get_config('demo')
  c.backbone.kwargs.update(TINY)
  c.data.views[0].update({'size': 32, 'second_size': 32})
  c.model.random_tokenizer.update({'n_hid': 8, 'n_blk_per_group': 1, 'vocab_size': VOCAB})
  c.model.update({'num_masking_patches': MASKED, 'min_num_patches': 2, 'regressor_depth': 2, 'decoder_depth': 1,
                  'neck_num_heads': 2})
  return c


def tiny_batch(n=4, seed=0):
  rng = np.random.default_rng(seed)
  return {'views': (jnp.asarray(rng.normal(size=(n, 32, 32, 3)), jnp.float32),
                    jnp.asarray(rng.uniform(-2, 2, size=(n, 32, 32, 3)), jnp.float32))}


def test_configs():
  c = get_config()
  assert c.method == 'cae' and c.batch_size == 2048 and c.epochs == 300
  assert (c.optimizer.name, c.optimizer.lr, c.optimizer.betas, c.optimizer.weight_decay) == \
      ('adamw', 1.5e-3, (0.9, 0.999), 0.05)
  assert c.optimizer.grad_clip_norm == 3.0 and c.optimizer.no_decay_names == ()
  assert (c.schedule.warmup_epochs, c.schedule.warmup_start_factor, c.schedule.min_lr) == (10., 1e-4, 1e-5)
  k = c.backbone.kwargs
  assert (c.backbone.name, k.qkv_bias, k.layer_scale_init, k.pos_embed) == ('vit_base', 'qv', 0.1, 'sincos')
  m = c.model
  assert (m.regressor_depth, m.decoder_depth, m.neck_num_heads, m.lambd, m.base_momentum) == (4, 4, 12, 2., 0.)
  assert (m.num_masking_patches, m.min_num_patches, m.tokenizer_path) == (75, 16, '')
  v = c.data.views[0]
  assert (v['size'], v['second_size'], v['scale'], v['interpolation'], v['second_interpolation']) == \
      (224, 112, (0.08, 1.0), 'bicubic', 'lanczos')
  with pytest.raises(ValueError, match='valid: demo'):
    get_config('nope')


def test_masks_count_and_order():
  method = cae.Method(tiny_config())
  mask = jax.jit(method.mask, static_argnums=1)(jax.random.key(3), 64)
  assert mask.shape == (64, 16) and np.all(np.asarray(mask).sum(1) == MASKED)
  ids_keep, ids_masked = method.split(mask)
  assert ids_keep.shape == (64, 16 - MASKED) and ids_masked.shape == (64, MASKED)
  m = np.asarray(mask, bool)
  for row in range(64):  # the reference's boolean indexing: row-major order on both sides
    np.testing.assert_array_equal(ids_keep[row], np.flatnonzero(~m[row]))
    np.testing.assert_array_equal(ids_masked[row], np.flatnonzero(m[row]))
  assert len({tuple(r) for r in m.astype(int)}) > 10  # masks differ per image


def torch_leaf(path, value):
  value = np.asarray(value, np.float32)
  if path[-1] == 'kernel':
    value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
  return value


def torch_state(params, teacher):
  """jssl CAE params -> mmpretrain CAE's state dict (backbone, teacher, neck); pos_embed is jssl's sin-cos table."""
  from jssl.convert.vit import block_name, torch_key
  from tests.parity import tensors
  flat = lambda tree: jax.tree_util.tree_flatten_with_path(tree)[0]
  keys = lambda path: tuple(k.key for k in path)
  state = {}
  for prefix, tree in (('backbone', params['backbone']), ('teacher', teacher)):
    for path, v in flat(tree):
      state[f'{prefix}.{torch_key(keys(path), "mmpretrain", True)}'] = torch_leaf(keys(path), v)
    state[f'{prefix}.pos_embed'] = get_2d_sincos_pos_embed(TINY['embed_dim'], 4)[None]
  for path, v in flat(params['neck']):
    p = keys(path)
    if p[0].startswith('decoders_'):  # BEiT blocks, named as the backbone's
      name = f'decoders.{p[0].split("_")[1]}.{block_name(p[1:], "mmpretrain", True)}'
    else:
      name = '.'.join(p).replace('regressors_', 'regressors.').replace('mlp.fc1', 'ffn.layers.0.0')
      name = re.sub(r'\.(kernel|scale)$', '.weight', name.replace('mlp.fc2', 'ffn.layers.1'))
    state[f'neck.{name}'] = torch_leaf(p, v)
  return tensors(state)


def torch_cae(c, tokenizer_state):
  from mmpretrain.registry import MODELS
  from mmpretrain.utils import register_all_modules
  register_all_modules()
  k, m = c.backbone.kwargs, c.model
  model = MODELS.build(dict(
      type='CAE', base_momentum=m.base_momentum,
      backbone=dict(type='CAEPretrainViT', arch=dict(embed_dims=k.embed_dim, num_layers=k.depth,
                                                     num_heads=k.num_heads, feedforward_channels=4 * k.embed_dim),
                    img_size=k.img_size, patch_size=k.patch_size, layer_scale_init_value=0.1, bias='qv_bias'),
      neck=dict(type='CAENeck', num_classes=VOCAB, embed_dims=k.embed_dim, num_heads=m.neck_num_heads,
                regressor_depth=m.regressor_depth, decoder_depth=m.decoder_depth, mlp_ratio=4,
                layer_scale_init_value=0.1, mask_tokens_num=MASKED),
      head=dict(type='CAEHead', loss=dict(type='CAELoss', lambd=m.lambd)),
      target_generator=dict(type='DALL-E', n_hid=8, n_blk_per_group=1, vocab_size=VOCAB)))
  model.target_generator.load_state_dict(tokenizer_state)
  return model


def test_parity_with_mmpretrain_cae():
  torch = pytest.importorskip('torch')
  pytest.importorskip('mmpretrain')
  from jssl.models import dalle
  from tests.parity import assert_grads_close, nhwc_to_torch
  c = tiny_config()
  c.model.base_momentum = 0.5  # the recipe's 0 would make the teacher a copy: 0.5 checks the momentum update too
  method = cae.Method(c)
  batch = tiny_batch()
  # random values for every weight (biases, LayerNorms and layer scales included) in the shapes of jssl's init,
  # drawn in numpy: a jit'd init would only add its compile time here
  shapes = jax.eval_shape(method.init, jax.random.key(0), batch)
  rng = np.random.default_rng(4)
  params = jax.tree_util.tree_map_with_path(
      lambda path, s: jnp.asarray(rng.normal(size=s.shape) * 0.1 + (path[-1].key == 'scale'), jnp.float32), shapes[0])
  model_state = shapes[1]
  teacher = jax.tree.map(lambda x: x * 0.9 + 0.01, params['backbone'])
  # the tokenizer: mmpretrain's random init (+ random biases), copied into jssl
  torch.manual_seed(0)
  from mmpretrain.models.selfsup.cae import DALLEEncoder
  ref_tok = DALLEEncoder(n_hid=8, n_blk_per_group=1, vocab_size=VOCAB)
  with torch.no_grad():
    for name, p in ref_tok.named_parameters():
      if name.endswith('.b'):
        p.normal_(std=0.1)
  tokenizer = jax.tree.map(jnp.asarray, dalle.from_torch_state(ref_tok.state_dict()))
  method_state = {'target': {'params': {'backbone': teacher}}, 'tokenizer': tokenizer}

  model = torch_cae(c, ref_tok.state_dict())
  missing, unexpected = model.load_state_dict(torch_state(params, teacher), strict=False)
  assert not unexpected and all(k.startswith('target_generator.') for k in missing), (missing, unexpected)
  model.train()

  # a different block of 6 patches per image (the generator itself: test_masks_count_and_order, test_masks.py)
  mask = np.zeros((4, 4, 4), np.float32)
  for i, (top, left, h, w) in enumerate([(0, 0, 2, 3), (1, 1, 3, 2), (2, 0, 2, 3), (0, 2, 3, 2)]):
    mask[i, top:top + h, left:left + w] = 1
  mask = jnp.asarray(mask.reshape(4, 16))
  method.mask = lambda rng, batch_size: mask
  (loss, (metrics, _, new_state)), grads = jax.jit(jax.value_and_grad(method.loss, has_aux=True))(
      params, model_state, method_state, batch, jax.random.key(1), 0)
  # the reference's inputs: the ViT view as is, the tokenizer view un-normalized to 0..255 pixels, then
  # TwoNormDataPreprocessor's second normalization (x + 31.875) / 318.75
  mean, std = np.asarray(c.data.mean), np.asarray(c.data.std)
  pixels = (np.asarray(batch['views'][1]) * std + mean) * 255.
  inputs = [nhwc_to_torch(batch['views'][0]), nhwc_to_torch((pixels + 31.875) / 318.75)]
  samples = [types.SimpleNamespace(mask=torch.from_numpy(np.asarray(mask[i]).reshape(4, 4))) for i in range(4)]
  ref = model.loss(inputs, samples)
  ref['loss'].backward()
  np.testing.assert_allclose(metrics['main'], ref['main'].item(), rtol=1e-4)
  np.testing.assert_allclose(metrics['align'], ref['align'].item(), rtol=1e-4)
  np.testing.assert_allclose(loss, ref['loss'].item(), rtol=1e-4)
  assert metrics['align'] > 0.01 * metrics['main']  # both terms matter here
  # gradients reach the encoder through both terms: its first layer and the regressor's cross attention
  assert_grads_close(grads['backbone']['patch_embed']['proj']['kernel'],
                     model.backbone.patch_embed.projection.weight.grad.numpy().transpose(2, 3, 1, 0))
  assert_grads_close(grads['neck']['regressors_0']['cross_attn']['k']['kernel'],
                     model.neck.regressors[0].cross_attn.k.weight.grad.numpy().T)
  assert_grads_close(grads['neck']['decoders_0']['attn']['qkv']['kernel'],
                     model.neck.decoders[0].attn.qkv.weight.grad.numpy().T)
  # the momentum update in the same iteration, with the encoder as it was in this step (before any optimizer step)
  assert list(new_state['target']) == ['params'] and list(new_state['target']['params']) == ['backbone']
  new_teacher = new_state['target']['params']['backbone']
  ref_teacher = torch_state(params, new_teacher)
  for name, value in model.teacher.state_dict().items():
    if name != 'pos_embed':
      np.testing.assert_allclose(ref_teacher[f'teacher.{name}'], value.numpy(), rtol=1e-6, atol=1e-7, err_msg=name)
  np.testing.assert_allclose(new_teacher['blocks_0']['attn']['qkv']['kernel'],
                             0.5 * (teacher['blocks_0']['attn']['qkv']['kernel'] +
                                    params['backbone']['blocks_0']['attn']['qkv']['kernel']), rtol=1e-6)
  # the tokenizer never changes and is not a parameter
  assert 'tokenizer' not in params
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), new_state['tokenizer'], tokenizer))


def test_missing_tokenizer_path_is_one_line_error(tmp_path):
  proc = run_main('--config=configs/cae.py:demo', f'--workdir={tmp_path}', '--config.model.tokenizer_path=')
  assert_one_line_error(proc, 'config.model.tokenizer_path', 'dalle_encoder.pth', 'python -m jssl.convert.dalle')
  assert not (tmp_path / 'checkpoints').exists()


# small enough for CI: a 2-block ViT 64 wide, 1 + 1 neck blocks
SMALL = {'backbone.kwargs.embed_dim': 64, 'backbone.kwargs.depth': 2, 'backbone.kwargs.num_heads': 2,
         'model.regressor_depth': 1, 'model.decoder_depth': 1, 'model.neck_num_heads': 2}


# tests/methods/test_every_method.py: 1 vs 8 devices, kill-and-resume and the demo, made small by these
DEVICES = SMALL
METHOD_STATE_LEAVES = 1  # the teacher and the tokenizer
# the teacher (updated inside the loss), the tokenizer in method_state and the on-device block masks
RESUME = {**SMALL, 'batch_size': 64, 'total_steps': 30}
