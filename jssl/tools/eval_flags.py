"""Flags shared by the frozen-feature tools (jssl.tools.extract_features, jssl.tools.tsne, jssl.evaluate.svm_voc):
which data, how each image is resized, and which backbone stages are pooled how (jssl.evaluate.features)."""
import sys

import ml_collections
from absl import flags
from ml_collections import config_dict, config_flags

FLAGS = flags.FLAGS
DATA_NAMES = ('digits', 'imagefolder', 'imagelist', 'cifar10', 'cifar100', 'tfds', 'voc2007')


def failer(tool):
  """fail(message): '<tool>: error: message' on stderr, exit code 2."""
  def fail(message):
    print(f'{tool}: error: {message}', file=sys.stderr, flush=True)
    sys.exit(2)
  return fail


def pretrained_and_out(argv, tool, example):
  """The one PRETRAINED argument of a tool that also needs --out (absl/orbax INFO chatter off unless -v is given)."""
  from absl import logging
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  if len(argv) != 2:
    failer(tool)(f'give exactly one PRETRAINED (a jssl workdir or an imported backbone directory), e.g. {example}')
  if not FLAGS.out:
    failer(tool)('--out is required')
  return argv[1]


def parse_floats(text, flag):
  try:
    return tuple(float(x) for x in text.split(',') if x.strip())
  except ValueError:
    raise ValueError(f'{flag}: expected comma-separated numbers, got {text!r}') from None


def parse_ints(text, flag):
  try:
    values = tuple(int(x) for x in text.split(',') if x.strip())
  except ValueError:
    raise ValueError(f'{flag}: expected comma-separated integers, got {text!r}') from None
  if any(v < 1 for v in values):
    raise ValueError(f'{flag}: values must be >= 1, got {text!r}')
  return values


def define_data_flags(tool):
  """--data.name (digits | imagefolder | imagelist | cifar10 | cifar100 | tfds | voc2007) and the other fields of
  jssl.data.sources.build_source (--data.root, --data.train_split, ...), as --config.data.* of jssl.main; voc2007
  reads PASCAL VOC 2007 from --data.root (the VOCdevkit/VOC2007 directory)."""
  data = ml_collections.ConfigDict({'name': 'digits', 'image_size': 32, 'skip_corrupt_images': False})
  for key in ('root', 'train_split', 'val_split', 'train_ann_file', 'val_ann_file', 'tfds_name'):
    data[key] = config_dict.placeholder(str)
  for arg in sys.argv[1:]:  # config_flags reads the overrides while defining the flag, and fails with a traceback
    key = arg[len('--data.'):].split('=', 1)[0] if arg.startswith('--data.') else None
    if key is not None and key not in data:
      failer(tool)(f"unknown field 'data.{key}' in --data.{key}; valid fields of data: {', '.join(sorted(data))}")
  config_flags.DEFINE_config_dict('data', data, 'The images: the embedded digits by default (no files).')


def define_extraction_flags(default_stages='', default_pool=None):
  flags.DEFINE_string('stages', default_stages, "Backbone stages: 'all', or e.g. 'feat1,feat5' (ResNet feat1..feat5, "
                      "Swin feat1..feat4, ViT cls,mean); empty: the last stage (ViT: the method's feature or cls).")
  flags.DEFINE_enum('pool', default_pool, ['specified', 'adaptive', 'avg'], "ResNet stage pooling: MMSelfSup's "
                    "'specified' (~9k dimensions per stage at 224 px) or 'adaptive' MultiPooling, or global 'avg' "
                    '(unset: specified for ResNet, avg for the others).')
  flags.DEFINE_integer('batch_size', 64, 'Global batch of the extraction (a multiple of the device count).')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype of the backbone.')
  flags.DEFINE_integer('resize', None, 'Shorter side first resized to (default 256; digits: --image_size).')
  flags.DEFINE_integer('size', None, 'Side of the square the backbone sees (default 224; digits: --image_size).')
  flags.DEFINE_enum('crop_mode', None, ['center', 'squash'], "'center': center crop of the resized image; 'squash': "
                    "the whole resized image resized to a square (MMSelfSup's VOC07 SVM extraction; the default for "
                    'voc2007 and svm_voc, center otherwise).')
  flags.DEFINE_string('interpolation', 'bilinear', 'Resize interpolation: bilinear | bicubic | lanczos.')
  flags.DEFINE_integer('step', None, 'A jssl workdir\'s checkpoint step (default: the latest).')


def build_sources(splits):
  """{split: source} of --data; VOC 2007 splits are trainval / test, the others the roles train / val of
  jssl.data.sources.build_source."""
  from jssl.data import sources
  data = FLAGS.data
  if data.name == 'voc2007':
    if not data.root:
      raise ValueError('--data.root is required for --data.name=voc2007 (the VOCdevkit/VOC2007 directory)')
    return {split: sources.VOC2007Source(data.root, split) for split in splits}
  if data.name not in DATA_NAMES:
    raise ValueError(f"data.name: unknown '{data.name}'; valid: {', '.join(DATA_NAMES)}")
  return {split: sources.build_source(data, split, cfg_path='data') for split in splits}


def eval_transform(data_name, squash=None):
  """The eval-time resize of the flags; `squash` None: squash for voc2007, center crop otherwise."""
  from jssl.data import transforms
  small = FLAGS.data.image_size if data_name == 'digits' else None
  resize = FLAGS.resize or small or 256
  size = FLAGS.size or small or 224
  squash = (data_name == 'voc2007') if squash is None else squash
  if FLAGS.crop_mode:
    squash = FLAGS.crop_mode == 'squash'
  if squash:
    return transforms.ResizeSquash(resize, size, FLAGS.interpolation)
  return transforms.ResizeCenterCrop(resize, size, FLAGS.interpolation)


def extract(pretrained, sources, data_name='voc2007'):
  """features.extract_pretrained with the flags' transform, stages, pool, batch size, dtype and step."""
  from jssl.evaluate import features
  return features.extract_pretrained(pretrained, sources, eval_transform(data_name), FLAGS.stages or None,
                                     FLAGS.pool, FLAGS.batch_size, FLAGS.dtype, FLAGS.step)
