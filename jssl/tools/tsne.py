"""t-SNE picture of a pretrained backbone's frozen features: one point per image, coloured by its class, with a
legend (MMSelfSup's tools/analysis_tools/visualize_tsne.py).

  python -m jssl.tools.tsne PRETRAINED --out=tsne.png [--data.name=digits] [--split=val] [--stages=feat5] [--pool=avg]
      [--num_samples=0] [--perplexity=30] [--max_iter=1000] [--seed=0] [--pixels=800]

PRETRAINED: a jssl workdir or an imported backbone directory. By default the embedded digits' test split (the 'val'
role, 359 images) at 32 px, the last stage globally averaged (--pool=specified gives MMSelfSup's ~9k-dimensional
pooled maps, which need 224-px inputs). t-SNE is scikit-learn's with the reference tool's settings (2-D, perplexity
30, early exaggeration 12, learning rate 200, 1000 iterations, random init). Several --stages write one PNG each
(OUT with _<stage> before the extension). Printed: the leave-one-out 5-NN accuracy of the classes in the 2-D
embedding (how separated the picture's clusters are). The picture needs matplotlib (pip install jssl[plot]).
"""
import os

from absl import app, flags

from jssl.tools import eval_flags

FLAGS = flags.FLAGS
fail = eval_flags.failer('tsne')


def tsne_embedding(features, perplexity=30., seed=0, early_exaggeration=12., learning_rate=200., max_iter=1000):
  """[N, 2] t-SNE of [N, D] features (scikit-learn, random init as the reference tool)."""
  from sklearn.manifold import TSNE
  perplexity = min(perplexity, (len(features) - 1) / 3.)  # sklearn needs perplexity < N
  return TSNE(2, perplexity=perplexity, early_exaggeration=early_exaggeration, learning_rate=learning_rate,
              max_iter=max_iter, init='random', random_state=seed).fit_transform(features)


def neighbour_accuracy(points, labels, k=5) -> float:
  """Leave-one-out k-NN accuracy (%) of `labels` among `points`: how well the embedding keeps classes apart."""
  from sklearn.model_selection import cross_val_score, LeaveOneOut
  from sklearn.neighbors import KNeighborsClassifier
  k = min(k, len(points) - 1)
  return 100. * float(cross_val_score(KNeighborsClassifier(k), points, labels, cv=LeaveOneOut()).mean())


def plot_embedding(points, labels, class_names, path, pixels=800, title=''):
  """Scatter of `points` [N, 2] coloured by `labels` with a legend of `class_names` on the right, as a PNG
  1.25 `pixels` wide and `pixels` high."""
  try:
    import matplotlib
  except ImportError:
    raise ImportError('the t-SNE picture needs matplotlib: pip install matplotlib (or jssl[plot])') from None
  import numpy as np
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  dpi = 100
  fig = plt.figure(figsize=(1.25 * pixels / dpi, pixels / dpi), dpi=dpi)
  ax = fig.add_axes((0.03, 0.03, 0.74, 0.91))
  classes = np.unique(labels)
  colors = plt.get_cmap('tab20' if len(classes) > 10 else 'tab10')
  for i, c in enumerate(classes):
    chosen = labels == c
    ax.scatter(points[chosen, 0], points[chosen, 1], s=max(4, 6000 // len(points)), color=colors(i % colors.N),
               label=class_names[c] if 0 <= c < len(class_names) else str(c))
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(title, fontsize=10)
  ax.legend(loc='center left', bbox_to_anchor=(1.01, 0.5), fontsize=9, markerscale=2, frameon=False)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)


def stage_path(out, stage, several):
  root, ext = os.path.splitext(out)
  return f'{root}_{stage}{ext or ".png"}' if several else out


def main(argv):
  pretrained = eval_flags.pretrained_and_out(argv, 'tsne', 'python -m jssl.tools.tsne workdirs/simclr_demo '
                                             '--out=tsne.png')
  if FLAGS.data.name == 'voc2007':
    fail('--data.name=voc2007 is multi-label; t-SNE colours one class per image: use a single-label dataset')
  import numpy as np
  from jssl.convert.errors import ConversionError
  from jssl.data.sources import DataNotFoundError, ReorderedSource
  try:
    source = eval_flags.build_sources([FLAGS.split])[FLAGS.split]
    if 0 < FLAGS.num_samples < len(source):
      chosen = np.sort(np.random.default_rng(FLAGS.seed).choice(len(source), FLAGS.num_samples, replace=False))
      source = ReorderedSource(source, chosen, tag='tsne')
    features, labels, stages = eval_flags.extract(pretrained, {FLAGS.split: source}, FLAGS.data.name)
  except (DataNotFoundError, ConversionError, ValueError, FileNotFoundError) as e:
    fail(str(e))
  labels = labels[FLAGS.split]
  inner = getattr(source, 'source', source)
  class_names = list(getattr(inner, 'classes', [])) or [str(c) for c in range(int(labels.max()) + 1)]
  for stage in stages:
    points = tsne_embedding(features[FLAGS.split][stage], FLAGS.perplexity, FLAGS.seed, FLAGS.early_exaggeration,
                            FLAGS.learning_rate, FLAGS.max_iter)
    accuracy = neighbour_accuracy(points, labels)
    path = stage_path(FLAGS.out, stage, len(stages) > 1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
      plot_embedding(points, labels, class_names, path, FLAGS.pixels,
                     f'{os.path.basename(os.path.normpath(pretrained))} {stage}: {len(points)} images, '
                     f'5-NN {accuracy:.1f}%')
    except ImportError as e:
      fail(str(e))
    print(f'wrote {path}: t-SNE of {stage} ({features[FLAGS.split][stage].shape[1]} dims) of {len(points)} '
          f'{FLAGS.data.name} {FLAGS.split} images; 5-NN accuracy in the embedding {accuracy:.1f}%', flush=True)


def define_flags():
  flags.DEFINE_string('out', None, 'The PNG to write.')
  flags.DEFINE_enum('split', 'val', ['train', 'val'], 'Which split of --data.')
  flags.DEFINE_integer('num_samples', 0, 'Embed this many random images of the split (0: all).')
  flags.DEFINE_float('perplexity', 30., 't-SNE perplexity.')
  flags.DEFINE_float('early_exaggeration', 12., 't-SNE early exaggeration.')
  flags.DEFINE_float('learning_rate', 200., 't-SNE learning rate.')
  flags.DEFINE_integer('max_iter', 1000, 't-SNE iterations.')
  flags.DEFINE_integer('seed', 0, 'Seed of the sample and of t-SNE.')
  flags.DEFINE_integer('pixels', 800, 'Height of the PNG in pixels (its width adds a quarter for the legend).')
  eval_flags.define_data_flags('tsne')
  eval_flags.define_extraction_flags(default_pool='avg')


if __name__ == '__main__':
  define_flags()
  from jssl.config import parse_flags
  app.run(main, flags_parser=parse_flags)
