"""The VOC07 SVM and low-shot SVM benchmarks: linear SVMs on frozen per-stage features of PASCAL VOC 2007, the
protocol of MMSelfSup's tools/benchmarks/classification/svm_voc07 (the SVM scripts of FAIR's
fair_self_supervision_benchmark, which it copies).

  python -m jssl.evaluate.svm_voc --pretrained=workdirs/simclr --voc_root=data/VOCdevkit/VOC2007 \\
      [--stages=feat5] [--low_shot] [--workers=8] [--json=svm.json]
  python -m jssl.evaluate.svm_voc --features_dir=DIR ...   # features written by python -m jssl.tools.extract_features

The protocol, as the reference scripts run it:
  features  per image and stage (MMSelfSup's extraction: shorter side to 256, then the whole image resized to
            224 x 224; ResNet stages pooled to ~9k dimensions, jssl.evaluate.features), each L2-normalized as
            x / (|x| + 1e-5).
  costs     the given list (MMSelfSup's scripts: 1.0, 10.0, 100.0) followed by 0.5**4 .. 0.5**19: 19 costs.
  SVM       one per class: scikit-learn LinearSVC(C=cost, class_weight={1: 2, -1: 1}, squared hinge, L2, dual,
            tol 1e-4, max_iter 2000, intercept_scaling 1). (random_state=0 here so runs repeat; the reference
            leaves liblinear's shuffling unseeded.)
  full      per class, 3-fold cross-validation on trainval (scikit-learn's 'average_precision', unshuffled stratified
            folds) picks the cost (the first of the best), then the SVM is trained on all of trainval, where
            'difficult' images count as negatives. Test AP ignores the difficult images of each class.
  low-shot  for k in 1, 2, 4, 8, 16, 32, 64, 96 and 5 independent samples: per class, k positive and 19 k negative
            trainval images (never difficult ones); an SVM per cost on those alone (no cross-validation); the test
            mAP of each cost; per k the reported cost is the one whose mean test mAP over the samples is highest
            (the reference picks it on the test set), with the mean / std / min / max over the samples there.
  AP        the reference's: the area under the precision-recall curve whose precision is made monotone (each
            precision replaced by the highest at any larger recall), summed at every recall step (the VOC2010+
            "all points" AP, not VOC2007's 11-point one): the tables the reference publishes are computed so.
  mAP       the mean AP over the 20 classes, in percent.
"""
import os
import warnings

import numpy as np

from jssl.data.sources import VOC_CLASSES, VOC_SPLITS, DataNotFoundError, VOC2007Source

COSTS = (1.0, 10.0, 100.0)
K_VALUES = (1, 2, 4, 8, 16, 32, 64, 96)
MAX_ITER = 2000


# --- SVMs ---------------------------------------------------------------------------------------------------------
def normalize_features(x):
  """x / (|x| + 1e-5) per row, in float64 (what liblinear trains on)."""
  x = np.asarray(x, np.float64)
  return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-5)


def cost_list(costs=COSTS) -> tuple:
  """The reference's costs: the given ones, then 0.5**4 .. 0.5**19."""
  return tuple(float(c) for c in costs) + tuple(0.5**n for n in range(4, 20))


def voc_ap(targets, scores) -> float:
  """AP of `scores` for binary `targets` (> 0 positive) as the reference computes it: images ranked by score (ties
  in argsort order), precision made monotone from the right, summed over the recall steps (in [0, 1])."""
  targets = np.asarray(targets) > 0
  order = np.argsort(np.asarray(scores, np.float64))[::-1]
  hits = targets[order].astype(np.float64)
  true_pos = np.cumsum(hits)
  precision = true_pos / np.arange(1, len(hits) + 1)
  recall = true_pos / max(targets.sum(), 1)
  recall = np.concatenate([[0.], recall, [1.]])
  precision = np.concatenate([[0.], precision, [0.]])
  precision = np.maximum.accumulate(precision[::-1])[::-1]
  steps = np.nonzero(recall[1:] != recall[:-1])[0] + 1
  return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def make_svm(cost):
  from sklearn.svm import LinearSVC
  return LinearSVC(C=cost, class_weight={1: 2, -1: 1}, intercept_scaling=1.0, penalty='l2', loss='squared_hinge',
                   tol=1e-4, dual=True, max_iter=MAX_ITER, random_state=0)


def fit_svm(x, y, cost):
  """LinearSVC on (x, y in {1, -1}); (svm, whether liblinear converged). Non-convergence is counted, not warned."""
  from sklearn.exceptions import ConvergenceWarning
  svm = make_svm(cost)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', ConvergenceWarning)
    svm.fit(x, y)
  return svm, bool(np.all(svm.n_iter_ < MAX_ITER))


def train_class(x, labels, costs):
  """One class of the full benchmark: (chosen cost, cross-validation APs per cost, the SVM trained on all of `x`,
  unconverged fits). `labels` in VOC's coding; only 1 is positive (difficult images train as negatives)."""
  from sklearn.exceptions import ConvergenceWarning
  from sklearn.model_selection import cross_validate
  y = np.where(labels == 1, 1, -1)
  cv_aps, unconverged = [], 0
  for cost in costs:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', ConvergenceWarning)
      cv = cross_validate(make_svm(cost), x, y, cv=3, scoring='average_precision', return_estimator=True)
    cv_aps.append(float(np.mean(cv['test_score'])))
    unconverged += sum(int(np.any(e.n_iter_ >= MAX_ITER)) for e in cv['estimator'])
  cost = costs[int(np.argmax(cv_aps))]
  svm, converged = fit_svm(x, y, cost)
  return cost, cv_aps, svm, unconverged + (not converged)


def test_aps(weights, biases, x, labels):
  """AP per class of linear scores x @ w + b, the difficult images (label 0) of each class left out."""
  scores = x @ np.asarray(weights).T + np.asarray(biases)
  return [voc_ap(labels[labels[:, c] != 0, c], scores[labels[:, c] != 0, c]) for c in range(labels.shape[1])]


def svm_benchmark(train_x, train_labels, test_x, test_labels, costs=COSTS, workers=1, class_names=VOC_CLASSES):
  """The full VOC07 SVM benchmark of one stage: {'mAP', 'ap': {class: AP %}, 'cost': {class: C},
  'cv_ap': {class: cross-validation AP % of the chosen cost}, 'unconverged_fits'}. `*_labels` [N, C] in VOC's
  coding (1 / -1 / 0 difficult); features are normalized here."""
  from joblib import Parallel, delayed
  costs = cost_list(costs)
  train_x, test_x = normalize_features(train_x), normalize_features(test_x)
  results = Parallel(n_jobs=workers)(delayed(train_class)(train_x, train_labels[:, c], costs)
                                     for c in range(train_labels.shape[1]))
  aps = test_aps([r[2].coef_[0] for r in results], [r[2].intercept_[0] for r in results], test_x, test_labels)
  names = list(class_names)
  return {'mAP': 100. * float(np.mean(aps)), 'ap': {n: 100. * a for n, a in zip(names, aps)},
          'cost': {n: r[0] for n, r in zip(names, results)},
          'cv_ap': {n: 100. * max(r[1]) for n, r in zip(names, results)},
          'unconverged_fits': int(sum(r[3] for r in results))}


def low_shot_labels(labels, k, rng):
  """A low-shot training set in VOC's coding: per class, k random positives (label 1) and (C - 1) k random
  negatives (label -1) keep their labels, everything else becomes 0 (left out); difficult images are never drawn."""
  out = np.zeros_like(labels)
  num_classes = labels.shape[1]
  for c in range(num_classes):
    for value, count in ((1, k), (-1, (num_classes - 1) * k)):
      pool = np.nonzero(labels[:, c] == value)[0]
      if len(pool) < count:
        kind = 'positive' if value == 1 else 'negative'
        raise ValueError(f'low-shot k={k}: class {c} has {len(pool)} {kind} training images, needs {count}')
      out[rng.choice(pool, count, replace=False), c] = value
  return out


def low_shot_run(train_x, train_labels, test_x, test_labels, k, sample, costs, seed):
  """Test mAP (%) per cost of one low-shot sample, and its unconverged fits."""
  labels = low_shot_labels(train_labels, k, np.random.default_rng([seed, k, sample]))
  maps, unconverged = [], 0
  for cost in costs:
    weights, biases = [], []
    for c in range(labels.shape[1]):
      keep = labels[:, c] != 0
      svm, converged = fit_svm(train_x[keep], labels[keep, c], cost)
      weights.append(svm.coef_[0])
      biases.append(svm.intercept_[0])
      unconverged += not converged
    maps.append(100. * float(np.mean(test_aps(weights, biases, test_x, test_labels))))
  return maps, unconverged


def low_shot_benchmark(train_x, train_labels, test_x, test_labels, k_values=K_VALUES, num_samples=5, costs=COSTS,
                       seed=0, workers=1):
  """The low-shot SVM benchmark of one stage: {k: {'mean', 'std', 'min', 'max' (mAP % over the samples), 'cost',
  'maps' (per sample), 'unconverged_fits' (of all costs)}}, at the cost whose mean over the samples is highest."""
  from joblib import Parallel, delayed
  costs = cost_list(costs)
  train_x, test_x = normalize_features(train_x), normalize_features(test_x)
  runs = [(k, s) for k in k_values for s in range(num_samples)]
  results = Parallel(n_jobs=workers)(delayed(low_shot_run)(train_x, train_labels, test_x, test_labels, k, s, costs,
                                                           seed) for k, s in runs)
  out = {}
  for k in k_values:
    of_k = [r for (rk, _), r in zip(runs, results) if rk == k]
    maps = np.array([r[0] for r in of_k])  # [samples, costs]
    best = int(np.argmax(maps.mean(axis=0)))
    column = maps[:, best]
    out[k] = {'mean': float(column.mean()), 'std': float(column.std()), 'min': float(column.min()),
              'max': float(column.max()), 'cost': costs[best], 'maps': [float(m) for m in column],
              'unconverged_fits': int(sum(r[1] for r in of_k))}
  return out


# --- CLI ----------------------------------------------------------------------------------------------------------
def load_features_dir(path, stages=''):
  """({split: {stage: [N, D]}}, {split: labels}, stages) from the files python -m jssl.tools.extract_features
  --data.name=voc2007 writes: <split>_<stage>.npy, <split>_labels.npy and meta.json (whose stages `stages` '' means)."""
  import json
  meta_path = os.path.join(path, 'meta.json')
  if not os.path.isfile(meta_path):
    raise DataNotFoundError(f'data not found: {meta_path} (--features_dir: the --out of python -m '
                            'jssl.tools.extract_features PRETRAINED --data.name=voc2007)')
  with open(meta_path) as f:
    meta = json.load(f)
  if meta.get('data') != 'voc2007':
    raise ValueError(f"{meta_path}: features of --data.name={meta.get('data')}; the SVM benchmark needs "
                     '--data.name=voc2007')
  stages = tuple(s for s in stages.split(',') if s) if stages else tuple(meta['stages'])
  features, labels = {}, {}
  for split in VOC_SPLITS:
    features[split] = {}
    for name in [f'{split}_{stage}' for stage in stages] + [f'{split}_labels']:
      file = os.path.join(path, f'{name}.npy')
      if not os.path.isfile(file):
        raise DataNotFoundError(f'data not found: {file} (--features_dir: run python -m jssl.tools.extract_features '
                                'PRETRAINED --data.name=voc2007 --data.root=... --out=DIR first)')
      array = np.load(file)
      if name.endswith('_labels'):
        labels[split] = array
      else:
        features[split][name[len(split) + 1:]] = array
  return features, labels, stages


def format_table(results, k_values) -> str:
  """Stage | SVM mAP | low-shot mean mAP per k."""
  header = ['stage', 'SVM'] + [f'k={k}' for k in k_values]
  rows = [header]
  for stage, r in results.items():
    low = r.get('low_shot', {})
    rows.append([stage, f"{r['svm']['mAP']:.2f}" if 'svm' in r else '-']
                + [f"{low[k]['mean']:.2f}±{low[k]['std']:.2f}" if k in low else '-' for k in k_values])
  widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
  return '\n'.join(' | '.join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


def main(argv):
  import json
  from absl import flags, logging
  from jssl.tools import eval_flags
  FLAGS = flags.FLAGS
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  fail = eval_flags.failer('svm_voc')
  if len(argv) > 1:
    fail(f'unexpected arguments {argv[1:]}; the pretrained backbone is --pretrained=PATH')
  if bool(FLAGS.pretrained) == bool(FLAGS.features_dir):
    fail('give exactly one of --pretrained (a jssl workdir or imported backbone) and --features_dir')
  if FLAGS.pretrained and not FLAGS.voc_root:
    fail('--voc_root is required with --pretrained (the VOCdevkit/VOC2007 directory)')
  from jssl.convert.errors import ConversionError
  try:
    costs = eval_flags.parse_floats(FLAGS.costs, '--costs')
    k_values = eval_flags.parse_ints(FLAGS.k_values, '--k_values') if FLAGS.low_shot else ()
    if FLAGS.pretrained:
      sources = {split: VOC2007Source(FLAGS.voc_root, split) for split in VOC_SPLITS}
      features, labels, stages = eval_flags.extract(FLAGS.pretrained, sources)
    else:
      features, labels, stages = load_features_dir(FLAGS.features_dir, FLAGS.stages)
    results = {}
    for stage in stages:
      args = (features['trainval'][stage], labels['trainval'], features['test'][stage], labels['test'])
      results[stage] = {'dim': int(args[0].shape[1]), 'svm': svm_benchmark(*args, costs, FLAGS.workers)}
      print(f"{stage}: SVM mAP {results[stage]['svm']['mAP']:.2f}", flush=True)
      if k_values:
        low = low_shot_benchmark(*args, k_values, FLAGS.num_samples, costs, FLAGS.seed, FLAGS.workers)
        results[stage]['low_shot'] = low
        print(f'{stage}: low-shot mAP ' + ', '.join(f"k={k} {low[k]['mean']:.2f}" for k in k_values), flush=True)
  except (DataNotFoundError, ConversionError, ValueError, FileNotFoundError) as e:
    fail(str(e))
  print(format_table(results, k_values))
  if FLAGS.json:
    with open(FLAGS.json, 'w') as f:
      for r in results.values():  # JSON keys are strings
        if 'low_shot' in r:
          r['low_shot'] = {str(k): v for k, v in r['low_shot'].items()}
      json.dump({'pretrained': FLAGS.pretrained or FLAGS.features_dir, 'costs': list(cost_list(costs)),
                 'results': results}, f, indent=2)
    print(f'wrote {FLAGS.json}')


def define_flags():
  from absl import flags
  from jssl.tools import eval_flags
  flags.DEFINE_string('pretrained', None, 'A jssl workdir or an imported backbone directory (python -m jssl.convert).')
  flags.DEFINE_string('voc_root', None, 'The VOCdevkit/VOC2007 directory (JPEGImages/, ImageSets/Main/).')
  flags.DEFINE_string('features_dir', None, 'Instead of --pretrained: the features python -m '
                      'jssl.tools.extract_features PRETRAINED --data.name=voc2007 wrote.')
  flags.DEFINE_string('costs', ','.join(map(str, COSTS)), 'SVM costs; 0.5**4 .. 0.5**19 are appended.')
  flags.DEFINE_bool('low_shot', True, 'Also run the low-shot benchmark.')
  flags.DEFINE_string('k_values', ','.join(map(str, K_VALUES)), 'Low-shot positives per class.')
  flags.DEFINE_integer('num_samples', 5, 'Low-shot independent samples per k.')
  flags.DEFINE_integer('seed', 0, 'Seed of the low-shot samples.')
  flags.DEFINE_integer('workers', os.cpu_count() or 1, 'Processes training SVMs (joblib).')
  flags.DEFINE_string('json', None, 'Also write the results to this JSON file.')
  eval_flags.define_extraction_flags()


if __name__ == '__main__':
  from absl import app
  define_flags()
  from jssl.config import parse_flags
  app.run(main, flags_parser=parse_flags)
