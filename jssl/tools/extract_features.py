"""Per-stage frozen features of a pretrained backbone, written as numpy files (MMSelfSup's extract.py).

  python -m jssl.tools.extract_features PRETRAINED --out=DIR [--stages=all] [--pool=specified] [--batch_size=64]
  python -m jssl.tools.extract_features PRETRAINED --data.name=imagefolder --data.root=data/imagenet --out=DIR
  python -m jssl.tools.extract_features PRETRAINED --data.name=voc2007 --data.root=data/VOCdevkit/VOC2007 --out=F
  python -m jssl.evaluate.svm_voc --features_dir=F

--data.* are the fields of jssl.main's --config.data.* (jssl/data/sources.py; default: the embedded digits, no
files) plus the name voc2007.

PRETRAINED is a jssl workdir (config.json + checkpoints/) or an imported backbone directory (python -m jssl.convert
FILE DIR --format=... --backbone=...). Writes DIR/<split>_<stage>.npy (float32 [N, D]), DIR/<split>_labels.npy
([N] class ids, -1 unlabeled; VOC: [N, 20] of 1 / -1 / 0 = difficult) and DIR/meta.json (backbone, stages, their
dimensions, pooling, resize). Splits: --data.name=voc2007 trainval, test; the others train, val (the roles of
jssl.data.sources: digits' val is its test split). Stages and pooling: jssl/evaluate/features.py.
"""
import json
import os

from absl import app, flags

from jssl.tools import eval_flags

FLAGS = flags.FLAGS
fail = eval_flags.failer('extract_features')


def write_features(out, features, labels, meta):
  """DIR/<split>_<stage>.npy, DIR/<split>_labels.npy and DIR/meta.json."""
  import numpy as np
  os.makedirs(out, exist_ok=True)
  for split, stage_features in features.items():
    for stage, array in stage_features.items():
      np.save(os.path.join(out, f'{split}_{stage}.npy'), array)
    np.save(os.path.join(out, f'{split}_labels.npy'), labels[split])
  with open(os.path.join(out, 'meta.json'), 'w') as f:
    json.dump(meta, f, indent=2)


def main(argv):
  pretrained = eval_flags.pretrained_and_out(argv, 'extract_features',
                                             'python -m jssl.tools.extract_features workdirs/simclr --out=features')
  import jax
  from jssl.convert.errors import ConversionError
  from jssl.data.sources import DataNotFoundError
  from jssl.pretrained import pretrained_arch
  splits = FLAGS.splits or ('trainval,test' if FLAGS.data.name == 'voc2007' else 'train,val')
  splits = [s for s in splits.split(',') if s]
  try:
    name, kwargs = pretrained_arch(pretrained)
    sources = eval_flags.build_sources(splits)
    features, labels, stages = eval_flags.extract(pretrained, sources, FLAGS.data.name)
  except (DataNotFoundError, ConversionError, ValueError, FileNotFoundError) as e:
    fail(str(e))
  from jssl.data.transforms import ResizeSquash
  from jssl.models import build_backbone
  transform = eval_flags.eval_transform(FLAGS.data.name)
  first = features[splits[0]]
  meta = {'pretrained': os.path.abspath(pretrained), 'backbone': name, 'backbone_kwargs': kwargs,
          'data': FLAGS.data.name, 'data_root': FLAGS.data.root, 'stages': list(stages),
          'dims': {s: int(first[s].shape[1]) for s in stages},
          'pool': FLAGS.pool or build_backbone(name, **kwargs).pools[0], 'dtype': FLAGS.dtype,
          'transform': {'mode': 'squash' if isinstance(transform, ResizeSquash) else 'center',
                        'resize': transform.resize, 'interpolation': FLAGS.interpolation,
                        'size': transform.size if isinstance(transform, ResizeSquash) else transform.crop},
          'num_records': {s: int(len(labels[s])) for s in splits}}
  if jax.process_index() == 0:
    write_features(FLAGS.out, features, labels, meta)
    dims = ', '.join(f'{s}: {d}' for s, d in meta['dims'].items())
    counts = ', '.join(f'{s}: {n}' for s, n in meta['num_records'].items())
    print(f'wrote <split>_<stage>.npy, <split>_labels.npy and meta.json to {FLAGS.out} (dims {dims}; records '
          f'{counts})', flush=True)


def define_flags():
  flags.DEFINE_string('out', None, 'Directory to write the .npy files and meta.json into.')
  flags.DEFINE_string('splits', None, 'Comma-separated splits (default: train,val; voc2007: trainval,test).')
  eval_flags.define_data_flags('extract_features')
  eval_flags.define_extraction_flags(default_stages='all')


if __name__ == '__main__':
  define_flags()
  from jssl.config import parse_flags
  app.run(main, flags_parser=parse_flags)
