"""t-SNE: well-separated clusters stay separated in the 2-D embedding (k-NN accuracy there, checked by hand on a toy
case), and python -m jssl.tools.tsne writes a PNG of the requested size per stage."""
import numpy as np
import pytest
from PIL import Image

from jssl.tools import tsne
from tests.conftest import run_python
from tests.tools.test_extract_features import imported_resnet


def test_neighbour_accuracy_by_hand():
  points = np.array([[0., 0.], [0., 1.], [10., 10.], [10., 11.]])
  assert tsne.neighbour_accuracy(points, np.array([0, 0, 1, 1]), k=1) == 100.
  assert tsne.neighbour_accuracy(points, np.array([0, 1, 0, 1]), k=1) == 0.


def test_tsne_keeps_separated_clusters_apart():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(5), 24)
  centers = 10. * rng.normal(size=(5, 32))
  x = centers[labels] + rng.normal(size=(len(labels), 32))
  points = tsne.tsne_embedding(x, perplexity=20., seed=0, max_iter=300)
  assert points.shape == (120, 2)
  assert tsne.neighbour_accuracy(points, labels) == 100.
  assert tsne.neighbour_accuracy(points, rng.permutation(labels)) < 45.  # chance is 20%


def test_tsne_cli_writes_a_png_per_stage(tmp_path):
  pytest.importorskip('matplotlib')
  imported_resnet(tmp_path / 'r18')
  proc = run_python(['-m', 'jssl.tools.tsne', str(tmp_path / 'r18'), f'--out={tmp_path / "t.png"}',
                     '--stages=feat1,feat5', '--num_samples=80', '--pixels=200', '--max_iter=300'])
  assert proc.stdout.count('5-NN accuracy in the embedding') == 2
  for stage in ('feat1', 'feat5'):
    with Image.open(tmp_path / f't_{stage}.png') as image:
      assert image.format == 'PNG' and image.size == (250, 200)
      image.load()  # decodes the whole file
  proc = run_python(['-m', 'jssl.tools.tsne', str(tmp_path / 'r18'), f'--out={tmp_path / "v.png"}',
                     '--data.name=voc2007'], check=False)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
      'tsne: error: --data.name=voc2007 is multi-label; t-SNE colours one class per image: use a single-label dataset']
