import numpy as np
import pytest

from jssl.evaluate import knn


def numpy_weighted_knn(train_f, train_y, test_f, k, t, num_classes):
  train_f = train_f / np.linalg.norm(train_f, axis=1, keepdims=True)
  test_f = test_f / np.linalg.norm(test_f, axis=1, keepdims=True)
  preds = []
  for q in test_f:
    sims = train_f @ q
    nearest = np.argsort(-sims)[:k]
    votes = np.zeros(num_classes)
    for i in nearest:
      votes[train_y[i]] += np.exp(sims[i] / t)
    preds.append(np.argsort(-votes, kind='stable')[:5])
  return np.array(preds)


def clustered_features(seed=0, num_train=300, num_test=100, dim=16, num_classes=7):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(num_classes, dim))
  train_y = rng.integers(0, num_classes, num_train)
  test_y = rng.integers(0, num_classes, num_test)
  return (centers[train_y] + 1.5 * rng.normal(size=(num_train, dim)), train_y,
          centers[test_y] + 1.5 * rng.normal(size=(num_test, dim)), test_y)


def test_knn_matches_hand_computation():
  train_f, train_y, test_f, test_y = clustered_features()
  for k in (1, 20, 200):
    result = knn.knn_accuracy(train_f, train_y, test_f, test_y, k=k, temperature=0.07, chunk=33)
    ranked = numpy_weighted_knn(train_f, train_y, test_f, k, 0.07, 7)
    assert result['top1'] == 100. * np.mean(ranked[:, 0] == test_y)
    assert result['top5'] == 100. * np.mean((ranked == test_y[:, None]).any(1))
    assert result['top1'] > 30  # well above chance (14%) on separable clusters


def test_knn_several_k_at_once_match_brute_force():
  """MMSelfSup's protocol: k = 10, 20, 100, 200 and T = 0.07 from one search; each k's top-1 and top-5 are those
  of the NumPy brute force, and of a call with that k alone. 250 training rows: k=200 votes with most of them."""
  train_f, train_y, test_f, test_y = clustered_features(seed=1, num_train=250, num_test=90, num_classes=12)
  results = knn.knn_accuracy(train_f, train_y, test_f, test_y, k=(10, 20, 100, 200), temperature=0.07, chunk=40)
  assert list(results) == [10, 20, 100, 200]
  for k, result in results.items():
    ranked = numpy_weighted_knn(train_f, train_y, test_f, k, 0.07, 12)
    assert result == pytest.approx({'top1': 100. * np.mean(ranked[:, 0] == test_y),
                                    'top5': 100. * np.mean((ranked == test_y[:, None]).any(1))}, abs=1e-9), k
    assert result == knn.knn_accuracy(train_f, train_y, test_f, test_y, k=k, temperature=0.07)
  assert len({r['top1'] for r in results.values()}) > 1  # the ks do differ here
  # k beyond the training set: every row votes
  assert knn.knn_accuracy(train_f, train_y, test_f, test_y, k=(200, 1000))[1000] == \
      knn.knn_accuracy(train_f, train_y, test_f, test_y, k=250)


def test_extract_features_order_and_padding():
  import jax.numpy as jnp
  from jssl.train.sharding import make_mesh

  class Source:
    def __len__(self):
      return 10
    def __getitem__(self, i):
      return {'image': np.full((4, 4, 3), i, np.uint8), 'label': np.int32(i % 3), 'index': np.int64(i)}

  class Identity:
    def map(self, r):
      return r

  mesh = make_mesh()
  extractor = knn.make_extractor(lambda variables, x: x.mean(axis=(1, 2)) * variables, lambda x: x.astype(jnp.float32),
                                 mesh)
  feats, labels = knn.extract_features(extractor, 1., Source(), Identity(), 4, mesh)
  np.testing.assert_allclose(feats[:, 0], np.arange(10))
  np.testing.assert_array_equal(labels, np.arange(10) % 3)


def test_knn_reads_the_chosen_backbone_output():
  """config.eval.feature_stage: k >= 0 pools backbone output k (after the Sobel layer of DeepCluster's input); the
  last stage is exactly what the method's own `extract` gives; a stage the backbone lacks is one line."""
  import jax
  from jssl.config import load_config_file
  from jssl.models import build_backbone
  from jssl.models.layers import sobel
  from jssl.train.loop import Trainer
  from tests.conftest import apply_overrides
  c = apply_overrides(load_config_file('configs/deepcluster.py:demo'),
                      {'backbone.kwargs.num_filters': 8, 'model.num_clusters': 4, 'model.pca_dim': 4})
  trainer = Trainer(c, None, num_records=40, devices=jax.devices()[:1])
  state = trainer.init_state(jax.random.PRNGKey(0))
  images = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype(np.float32)
  all_outputs = build_backbone(c.backbone.name, **{**c.backbone.kwargs, 'out_indices': (0, 1, 2, 3, 4)})
  variables = {'params': state.params['backbone'], 'batch_stats': state.model_state['batch_stats']['backbone']}
  maps = all_outputs.apply(variables, sobel(images), train=False)
  for stage in range(5):
    c.eval.feature_stage = stage
    np.testing.assert_allclose(trainer.features.of_images(state)(images), np.asarray(maps[stage]).mean(axis=(1, 2)),
                               rtol=1e-5, atol=1e-6)
  c.eval.feature_stage = -1
  np.testing.assert_allclose(trainer.features.of_images(state)(images), np.asarray(maps[4]).mean(axis=(1, 2)),
                             rtol=1e-5, atol=1e-6)
  c.eval.feature_stage = 5
  with pytest.raises(ValueError, match=r'config.eval.feature_stage: 5 .* valid: -1 .*0\.\.4'):
    trainer.features.of_images(state)


def test_knn_stage_of_a_swin_is_one_of_its_outputs():
  """A Swin gives the normed maps of its out_indices only (the other stages have no norm): another stage is one
  line before anything runs (it failed in the first kNN evaluation, a missing param 'norm0')."""
  import jax
  from jssl.config import load_config_file
  from jssl.train.loop import Trainer
  c = load_config_file('configs/simmim.py:demo')
  c.eval.feature_stage = 0
  trainer = Trainer(c, None, num_records=40, devices=jax.devices()[:1])
  with pytest.raises(ValueError, match=r"config.eval.feature_stage: 0 is not an output of swin_tiny; valid: -1 "
                                       r"\(the method's features\), 1$"):
    trainer.features.extract_fn()
  c.eval.feature_stage = 1
  assert callable(trainer.features.extract_fn())


def make_data():
  """330 4x4 uint8 images of 8 classes (a pattern per class + noise), and a random projection to 16-d."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 8, 330).astype(np.int32)
  patterns = rng.integers(40, 216, (8, 4, 4, 3))
  images = np.clip(patterns[labels] + rng.integers(-120, 121, (330, 4, 4, 3)), 0, 255).astype(np.uint8)
  return images, labels, rng.normal(size=(48, 16)).astype(np.float32)


EIGHT_DEVICES = r'''
import json
import jax, jax.numpy as jnp, numpy as np
from jssl.evaluate import knn
from jssl.train.sharding import make_mesh
from tests.evaluate.test_knn import make_data

assert jax.device_count() == 8
rng = np.random.default_rng(0)
images, labels, projection = make_data()

class Source:
  def __init__(self, ids):
    self.ids = ids
  def __len__(self):
    return len(self.ids)
  def __getitem__(self, i):
    j = self.ids[i]
    return {'image': images[j], 'label': labels[j], 'index': np.int64(i)}

class Identity:
  def map(self, r):
    return r

train, test = Source(np.arange(0, 250)), Source(np.arange(250, 330))  # 250, 80 rows: the last batch is padded
out = {}
for name, devices in (('one', jax.devices()[:1]), ('eight', jax.devices())):
  mesh = make_mesh(devices=devices)
  extractor = knn.make_extractor(lambda w, x: x.reshape(x.shape[0], -1) @ w, lambda x: x.astype(jnp.float32) / 255.,
                                 mesh)
  train_f, train_y = knn.extract_features(extractor, projection, train, Identity(), 32, mesh)
  test_f, test_y = knn.extract_features(extractor, projection, test, Identity(), 32, mesh)
  result = knn.knn_accuracy(train_f, train_y, test_f, test_y, k=(10, 20, 100, 200), temperature=0.07, chunk=48,
                            mesh=mesh)
  out[name] = {'train_f': train_f.tolist(), 'train_y': train_y.tolist(), 'test_f': test_f.tolist(),
               'test_y': test_y.tolist(), 'knn': {str(k): v for k, v in result.items()}}
print('RESULT' + json.dumps(out))
'''


def test_knn_on_eight_devices_equals_one_device():
  """Features extracted with the batch over 8 simulated devices and kNN with the training rows split over them
  (250 rows: 32 per device, the last with 26 and 6 padding rows) give what 1 device gives, and what NumPy gives."""
  import json
  from tests.conftest import run_python
  proc = run_python(EIGHT_DEVICES, devices=8)
  out = json.loads(proc.stdout.split('RESULT')[-1])
  one, eight = out['one'], out['eight']
  images, _, projection = make_data()
  want = images.reshape(330, -1).astype(np.float32) / 255. @ projection
  np.testing.assert_allclose(eight['train_f'], want[:250], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(eight['test_f'], want[250:], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(eight['train_f'], one['train_f'], rtol=1e-6, atol=1e-6)
  assert eight['train_y'] == one['train_y'] and eight['test_y'] == one['test_y']
  assert eight['knn'] == one['knn']
  train_y, test_y = np.array(one['train_y']), np.array(one['test_y'])
  for k in (10, 20, 100, 200):
    ranked = numpy_weighted_knn(np.array(one['train_f']), train_y, np.array(one['test_f']), k, 0.07, 8)
    assert eight['knn'][str(k)] == pytest.approx({'top1': 100. * np.mean(ranked[:, 0] == test_y),
                                                  'top5': 100. * np.mean((ranked == test_y[:, None]).any(1))})
  assert eight['knn']['10']['top1'] > 50  # far above chance (12.5%): the features do carry the label
