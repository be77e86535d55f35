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


def test_knn_matches_hand_computation():
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(7, 16))
  train_y = rng.integers(0, 7, 300)
  test_y = rng.integers(0, 7, 100)
  train_f = centers[train_y] + 1.5 * rng.normal(size=(300, 16))
  test_f = centers[test_y] + 1.5 * rng.normal(size=(100, 16))
  for k in (1, 20, 200):
    result = knn.knn_accuracy(train_f, train_y, test_f, test_y, k=k, temperature=0.07, chunk=33)
    ranked = numpy_weighted_knn(train_f, train_y, test_f, k, 0.07, 7)
    assert result['top1'] == 100. * np.mean(ranked[:, 0] == test_y)
    assert result['top5'] == 100. * np.mean((ranked == test_y[:, None]).any(1))
    assert result['top1'] > 30  # well above chance (14%) on separable clusters


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
    np.testing.assert_allclose(trainer.knn_features(state)(images), np.asarray(maps[stage]).mean(axis=(1, 2)),
                               rtol=1e-5, atol=1e-6)
  c.eval.feature_stage = -1
  np.testing.assert_allclose(trainer.knn_features(state)(images), np.asarray(maps[4]).mean(axis=(1, 2)),
                             rtol=1e-5, atol=1e-6)
  c.eval.feature_stage = 5
  with pytest.raises(ValueError, match=r'config.eval.feature_stage: 5 .* valid: -1 .*0\.\.4'):
    trainer.knn_features(state)
