"""The Flax DALL-E tokenizer encoder against mmpretrain's `DALL-E` encoder with the same weights, and its weight
files: torch state dict -> .npz (python -m jssl.convert.dalle) -> the same params without torch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl.convert import dalle as dalle_convert
from jssl.convert.errors import ConversionError
from jssl.models import dalle
from tests.conftest import run_python

torch = pytest.importorskip('torch')


def torch_encoder(n_hid=8, n_blk_per_group=1, vocab_size=32, seed=0):
  pytest.importorskip('mmpretrain')
  from mmpretrain.models.selfsup.cae import DALLEEncoder
  torch.manual_seed(seed)
  model = DALLEEncoder(n_hid=n_hid, n_blk_per_group=n_blk_per_group, vocab_size=vocab_size)
  with torch.no_grad():  # the reference inits every bias to zero: random biases test their mapping too
    for name, p in model.named_parameters():
      if name.endswith('.b'):
        p.normal_(std=0.1)
  return model.eval()


@pytest.mark.parametrize('n_blk_per_group', [1, 2])
def test_logits_and_tokens_match_mmpretrain(n_blk_per_group):
  model = torch_encoder(n_blk_per_group=n_blk_per_group)
  params = dalle.from_torch_state(model.state_dict())
  dalle.check_params(params, 'test')
  enc = dalle.encoder_for(params)
  assert (enc.n_hid, enc.n_blk_per_group, enc.vocab_size) == (8, n_blk_per_group, 32)
  images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  x = dalle.map_pixels(jnp.asarray(images))
  np.testing.assert_allclose(x, images * 0.8 + 0.1, rtol=1e-6)
  logits = enc.apply({'params': params}, x)
  assert logits.shape == (2, 4, 4, 32)
  with torch.no_grad():
    ref = model(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
  np.testing.assert_array_equal(dalle.tokens(params, x), ref.argmax(-1).reshape(2, 16))


def test_pth_to_npz_round_trip(tmp_path):
  model = torch_encoder(n_blk_per_group=2)
  pth, npz = tmp_path / 'dalle_encoder.pth', tmp_path / 'dalle_encoder.npz'
  torch.save({'state_dict': model.state_dict()}, pth)
  proc = run_python(['-m', 'jssl.convert.dalle', str(pth), str(npz)])
  assert 'n_hid 8, 2 blocks per group, vocabulary 32' in proc.stdout
  from_pth, from_npz = dalle.load_tokenizer(str(pth)), dalle.load_tokenizer(str(npz))
  flat_pth = jax.tree_util.tree_leaves_with_path(from_pth)
  flat_npz = jax.tree_util.tree_leaves_with_path(from_npz)
  assert [p for p, _ in flat_pth] == [p for p, _ in flat_npz]
  assert len(flat_pth) == 2 + 8 * 8 + 3 * 2 + 2  # input, 8 blocks x 4 convs, 3 id_paths, output
  for (_, a), (_, b) in zip(flat_pth, flat_npz):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(from_npz['group_1_block_1']['conv_1']['kernel'],
                                model.blocks.group_1.block_1.res_path.conv_1.w.detach().numpy().transpose(2, 3, 1, 0))
  # a file of another architecture: an error naming the key (the CLI prints it as one line, exit 2), nothing written
  bad = tmp_path / 'bad.pth'
  torch.save({'blocks.input.w': torch.zeros(8, 3, 7, 7), 'head.weight': torch.zeros(2, 2)}, bad)
  with pytest.raises(ConversionError, match='unexpected keys: head.weight'):
    dalle_convert.main([str(bad), str(tmp_path / 'bad.npz')])
  assert sorted(p.name for p in tmp_path.iterdir()) == ['bad.pth', 'dalle_encoder.npz', 'dalle_encoder.pth']


def test_missing_or_wrong_weights_are_one_line_errors(tmp_path):
  for path in ('', str(tmp_path / 'nope.npz')):
    with pytest.raises(ValueError, match=r'^config.model.tokenizer_path: .*jssl.convert.dalle') as e:
      dalle.load_tokenizer(path)
    assert '\n' not in str(e.value) and dalle.WEIGHTS_URL in str(e.value)
  params = dalle.random_params(8, 1, 32)
  del params['group_2_block_1']['id_path']
  dalle.save_npz(str(tmp_path / 'cut.npz'), params)
  with pytest.raises(ConversionError, match='missing keys: group_2_block_1/id_path/bias'):
    dalle.load_tokenizer(str(tmp_path / 'cut.npz'))
