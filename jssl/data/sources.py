"""Random-access image sources (grain's RandomAccessDataSource protocol).

Every source has `__len__` and `__getitem__(i)` returning one record:

  {'image': np.uint8 [H, W, 3] RGB,
   'label': np.int32 scalar (-1 when unlabeled),
   'index': np.int64 scalar, the record's position in this source}

Sources:
  DigitsSource       scikit-learn's embedded 8x8 digits (no download), upsampled.
  ImageFolderSource  root/<class>/<image>, classes sorted -> labels 0..C-1.
  ImageListSource    MMSelfSup list files: `relative/path.JPEG [label]` lines.
  Cifar10Source      the `cifar-10-batches-py` pickles.
  Cifar100Source     the `cifar-100-python` pickles (fine labels).
  TfdsSource         `tfds.data_source` over an array_record-prepared dataset.
  VOC2007Source      PASCAL VOC 2007's multi-label classification (the VOC07 SVM benchmarks; not in
                     build_source: labels [20] of 1 / -1 / 0).

`build_source(cfg, split)` picks one from `config.data`, with `split` being the
role 'train' or 'val'. The fields it reads (missing or None -> default):

  name            'digits' | 'imagefolder' | 'imagelist' | 'cifar10' |
                  'cifar100' | 'tfds'.
  root            data location: imagefolder/imagelist: the dataset root that
                  holds the split folders (and meta/); cifar: the folder that
                  holds (or is) cifar-10-batches-py / cifar-100-python; tfds:
                  the TFDS data_dir (None -> TFDS_DATA_DIR or
                  ~/tensorflow_datasets). Unused by digits.
  train_split     which split the 'train' role reads. digits/cifar/tfds: a
                  split name (default 'train'); imagefolder/imagelist: the
                  sub-folder of root holding the images (default 'train';
                  '' for root itself).
  val_split       same for the 'val' role; default 'test' for digits/cifar,
                  'validation' for tfds, 'val' for imagefolder/imagelist.
  train_ann_file  imagelist only: list file, relative to root unless absolute
                  (default 'meta/train.txt').
  val_ann_file    likewise (default 'meta/val.txt').
  train_subset_file  imagefolder only: keep just the images a split file
                  lists (relative to root unless absolute; '' or None: all),
                  labelled by their class folder as in the full folder.
                  Lines are SimCLR's `n01440764_10026.JPEG` (1percent.txt,
                  10percent.txt: the class is the name's prefix) or
                  MMSelfSup's `n01440764/n01440764_10026.JPEG [label]`.
  val_subset_file likewise for the 'val' role.
  tfds_name       tfds only: the dataset name, e.g. 'imagenet2012'.
  image_size      digits only: output side length (default 32).
  skip_corrupt_images  False (default): reading an unreadable image file
                  raises CorruptImageError `cannot read image PATH: REASON`;
                  True: its record is replaced by the next readable one
                  (SkipCorruptImages), with a warning naming the file.

A configured location that does not exist raises DataNotFoundError, whose
one-line message names the path and the config key to fix.
"""

import os
import pickle

from absl import logging
import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.webp')
SOURCE_NAMES = ('digits', 'imagefolder', 'imagelist', 'cifar10', 'cifar100',
                'tfds')


class DataNotFoundError(Exception):
  """The configured data location does not exist (the CLI exits 2 on this)."""


class CorruptImageError(ValueError):
  """An image file that cannot be decoded (truncated, empty, not an image) or is gone: the one-line message is
  `cannot read image PATH: REASON`. The CLI stops with it (exit 2) unless config.data.skip_corrupt_images."""


class MissingImageError(CorruptImageError, FileNotFoundError):
  """A listed image file that does not exist (any longer)."""


def _record(image, label, index):
  return {'image': image, 'label': np.int32(label), 'index': np.int64(index)}


def _check_index(index, length):
  # Negative or out-of-range indices are caller bugs; fail instead of wrapping.
  if not 0 <= index < length:
    raise IndexError(f'record index {index} out of range [0, {length})')


def _read_image(path, where=''):
  """Decodes an image file into uint8 [H, W, 3] RGB; CorruptImageError naming the file and the reason when it
  cannot (`where`, e.g. ' (listed in meta/train.txt line 3)', is appended)."""
  try:
    with Image.open(path) as img:
      return np.asarray(img.convert('RGB'), dtype=np.uint8)
  except FileNotFoundError:
    raise MissingImageError(f'cannot read image {path}: file not found{where}') from None
  except MemoryError:  # the host's fault, not the file's
    raise
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... on damaged files
    raise CorruptImageError(f'cannot read image {path}: {_read_failure(path, e)}{where}') from None


def _read_failure(path, error):
  """PIL's reason on one line, without the path it sometimes repeats; 'empty file' for 0 bytes."""
  try:
    if os.path.getsize(path) == 0:
      return 'empty file (0 bytes)'
  except OSError:
    pass
  reason = ' '.join(str(error).replace(f"'{path}'", '').replace(path, '').split()) or type(error).__name__
  return reason.replace('cannot identify image file', 'not an image PIL can identify (unknown format or damaged)')


def _to_rgb(image, where):
  """uint8 [H, W], [H, W, 1] or [H, W, 3] -> uint8 [H, W, 3]."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[:, :, None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f'{where}: expected an [H, W, 1|3] image, got shape '
                     f'{image.shape}')
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return image.astype(np.uint8, copy=False)


class DigitsSource:
  """scikit-learn's 1797 8x8 digit images, as RGB `size` x `size` uint8.

  Fixed split, independent of any RNG: sample i of `load_digits()` is in
  'test' when i % 5 == 4 (359 images), else in 'train' (1438 images). The
  dataset cycles through writers and classes, so both splits cover all
  10 classes. Pixels 0..16 are scaled to 0..255 and bilinearly resized.
  """

  def __init__(self, split='train', size=32):
    from sklearn.datasets import load_digits  # Only this source needs sklearn.
    if split not in ('train', 'test'):
      raise ValueError(f"DigitsSource split must be 'train' or 'test', got "
                       f'{split!r}')
    if int(size) < 1:
      raise ValueError(f'DigitsSource size must be >= 1, got {size}')
    digits = load_digits()
    is_test = np.arange(len(digits.target)) % 5 == 4
    keep = is_test if split == 'test' else ~is_test
    self.split = split
    self.size = int(size)
    self.images = np.round(digits.images[keep] * (255.0 / 16.0)).astype(
        np.uint8)  # [N, 8, 8]
    self.labels = digits.target[keep].astype(np.int32)

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, index):
    _check_index(index, len(self))
    image = self.images[index]
    if self.size != image.shape[0]:
      image = np.asarray(Image.fromarray(image).resize(
          (self.size, self.size), Image.BILINEAR))
    return _record(_to_rgb(image, 'digits'), self.labels[index], index)

  def __repr__(self):
    return f'DigitsSource(split={self.split!r}, size={self.size})'


class ImageFolderSource:
  """root/<class>/**/<image>: sorted class folder names -> labels 0..C-1.

  `subset_file`: only the images it lists (semi-supervised splits), each
  labelled by its class folder with the label the full folder gives it;
  `subset_key` names the config field in error messages.
  """

  def __init__(self, root, subset_file=None,
               subset_key='config.data.train_subset_file'):
    root = os.fspath(root)
    if not os.path.isdir(root):
      raise DataNotFoundError(f'data not found: {root}')
    self.root = root
    self.subset_file = os.fspath(subset_file) if subset_file else None
    self.classes = sorted(
        d.name for d in os.scandir(root) if d.is_dir() and
        not d.name.startswith('.'))
    if self.subset_file:
      self.paths, self.labels = _read_subset(root, self.classes,
                                             self.subset_file, subset_key)
      return
    self.paths, self.labels = [], []
    for label, name in enumerate(self.classes):
      class_dir = os.path.join(root, name)
      found = []
      for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith('.')]
        found += [os.path.join(dirpath, f) for f in filenames
                  if f.lower().endswith(IMAGE_EXTENSIONS)]
      found.sort()
      self.paths += found
      self.labels += [label] * len(found)
    if not self.paths:
      raise DataNotFoundError(
          f'data not found: no images ({"/".join(IMAGE_EXTENSIONS)}) in class '
          f'sub-folders of {root}; expected {root}/<class>/<image>')

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, index):
    _check_index(index, len(self))
    return _record(_read_image(self.paths[index]), self.labels[index], index)

  def __repr__(self):
    subset = f', subset_file={self.subset_file!r}' if self.subset_file else ''
    return (f'ImageFolderSource(root={self.root!r}{subset}, {len(self)} '
            f'images, {len(self.classes)} classes)')


def _read_subset(root, classes, subset_file, key):
  """(paths, labels) of the images `subset_file` lists, sorted as the full
  folder sorts them. A line is SimCLR's `n01440764_10026.JPEG` (the class is
  the prefix before '_') or a path under root with an optional label
  (MMSelfSup's `n01440764/n01440764_10026.JPEG 0`), which must be the
  folder's label. Every listed image must exist."""
  label_of = {name: label for label, name in enumerate(classes)}
  entries = []
  with open(subset_file) as f:
    for line_number, line in enumerate(f, start=1):
      parts = line.split()
      if not parts:
        continue
      where = f'{key}: {subset_file} line {line_number}'
      if len(parts) > 2:
        raise ValueError(f'{where}: expected "name" or "path [label]", got '
                         f'{line.strip()!r}')
      relative = parts[0]
      if '/' not in relative:  # SimCLR: n01440764_10026.JPEG
        relative = f'{relative.split("_")[0]}/{relative}'
      class_name = relative.split('/')[0]
      if class_name not in label_of:
        raise ValueError(f'{where}: class {class_name!r} of {parts[0]} is not '
                         f'a class folder of {root}')
      label = label_of[class_name]
      if len(parts) == 2 and parts[1] != str(label):
        raise ValueError(f'{where}: label {parts[1]} of {parts[0]}, but its '
                         f'folder {class_name} is class {label} of the sorted '
                         f'class folders')
      path = os.path.join(root, relative)
      if not os.path.isfile(path):
        raise DataNotFoundError(f'data not found: {path}, listed in {where}')
      entries.append((label, path))
  if not entries:
    raise ValueError(f'{key}: {subset_file} lists no images')
  entries.sort()
  return [p for _, p in entries], [label for label, _ in entries]


class ImageListSource:
  """MMSelfSup list format: each line of `ann_file` is `rel/path.JPEG [label]`.

  Paths are relative to `root` (MMSelfSup's data_prefix); a missing label
  means unlabeled (-1). Blank lines are skipped.
  """

  def __init__(self, root, ann_file):
    root, ann_file = os.fspath(root), os.fspath(ann_file)
    if not os.path.isfile(ann_file):
      raise DataNotFoundError(f'data not found: {ann_file} (list file)')
    if not os.path.isdir(root):
      raise DataNotFoundError(f'data not found: {root}')
    self.root, self.ann_file = root, ann_file
    self.paths, self.labels, self.line_numbers = [], [], []
    with open(ann_file) as f:
      for line_number, line in enumerate(f, start=1):
        parts = line.split()
        if not parts:
          continue
        if len(parts) > 2:
          raise ValueError(f'{ann_file}:{line_number}: expected '
                           f'"path [label]", got {line.rstrip()!r}')
        label = -1
        if len(parts) == 2:
          try:
            label = int(parts[1])
          except ValueError:
            raise ValueError(f'{ann_file}:{line_number}: label must be an '
                             f'integer, got {parts[1]!r}') from None
          if label < -1:
            raise ValueError(f'{ann_file}:{line_number}: label must be >= -1, '
                             f'got {label}')
        self.paths.append(os.path.join(root, parts[0]))
        self.labels.append(label)
        self.line_numbers.append(line_number)
    if not self.paths:
      raise ValueError(f'{ann_file}: no entries')

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, index):
    _check_index(index, len(self))
    where = f' (listed in {self.ann_file} line {self.line_numbers[index]})'
    return _record(_read_image(self.paths[index], where), self.labels[index],
                   index)

  def __repr__(self):
    return (f'ImageListSource(root={self.root!r}, ann_file={self.ann_file!r}, '
            f'{len(self)} images)')


class _CifarSource:
  """CIFAR python pickles: b'data' uint8 [N, 3072] (CHW row-major), labels."""

  folder = ''  # Name of the extracted archive folder.
  files = {}  # split -> pickle file names inside `folder`.
  label_key = b''

  def __init__(self, root, split='train'):
    root = os.fspath(root)
    if split not in self.files:
      raise ValueError(f'{type(self).__name__} split must be one of '
                       f'{sorted(self.files)}, got {split!r}')
    # Accept both the folder holding the extracted archive and the folder.
    folder = root if os.path.basename(os.path.normpath(root)) == self.folder \
        else os.path.join(root, self.folder)
    if not os.path.isdir(folder):
      raise DataNotFoundError(f'data not found: {folder}')
    images, labels = [], []
    for name in self.files[split]:
      path = os.path.join(folder, name)
      if not os.path.isfile(path):
        raise DataNotFoundError(f'data not found: {path}')
      with open(path, 'rb') as f:
        try:
          batch = pickle.load(f, encoding='bytes')
        except Exception as e:  # Any unpickling failure means a bad file.
          raise ValueError(f'{path}: not a CIFAR pickle ({e})') from None
      for key in (b'data', self.label_key):
        if not isinstance(batch, dict) or key not in batch:
          raise ValueError(f'{path}: missing key {key!r}')
      data = np.asarray(batch[b'data'])
      if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: b'data' must be uint8 [N, 3072], got "
                         f'{data.dtype} {list(data.shape)}')
      if len(batch[self.label_key]) != len(data):
        raise ValueError(f'{path}: {len(data)} images but '
                         f'{len(batch[self.label_key])} labels')
      images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
      labels.append(np.asarray(batch[self.label_key], dtype=np.int32))
    self.folder_path, self.split = folder, split
    self.images = np.ascontiguousarray(np.concatenate(images))  # [N,32,32,3]
    self.labels = np.concatenate(labels)

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, index):
    _check_index(index, len(self))
    return _record(self.images[index], self.labels[index], index)

  def __repr__(self):
    return (f'{type(self).__name__}({self.folder_path!r}, split={self.split!r},'
            f' {len(self)} images)')


class Cifar10Source(_CifarSource):
  folder = 'cifar-10-batches-py'
  files = {'train': [f'data_batch_{i}' for i in range(1, 6)],
           'test': ['test_batch']}
  label_key = b'labels'


class Cifar100Source(_CifarSource):
  folder = 'cifar-100-python'
  files = {'train': ['train'], 'test': ['test']}
  label_key = b'fine_labels'


class ReorderedSource:
  """`source` read in the order `indices` (records keep their own 'index'): an epoch's sampling plan, such as
  DeepCluster's uniform sampling over pseudo-classes. `tag` (e.g. the epoch) and a digest of the indices enter the
  repr, so grain refuses to resume an iterator of another plan."""

  def __init__(self, source, indices, tag=''):
    import hashlib
    self.source = source
    self.indices = np.asarray(indices, np.int64)
    self.tag = tag
    self.digest = hashlib.sha1(self.indices.tobytes()).hexdigest()[:12]

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, index):
    _check_index(index, len(self))
    return self.source[int(self.indices[index])]

  def __repr__(self):
    return f'ReorderedSource({self.source!r}, tag={self.tag!r}, n={len(self)}, sha1={self.digest})'


class SkipCorruptImages:
  """`source` with the record of each unreadable image (CorruptImageError) replaced by the next readable one
  (index + 1, + 2, ..., wrapping around): deterministic, so every batch keeps its size and a resumed run reads
  what an uninterrupted one reads. Every record gains 'corrupt': 1 when it stands in for a bad one, else 0 (the
  training loop pops it and reports the sum as train/corrupt_images). A warning names each bad file once per
  reading process (each grain worker is one). The repr is the source's, so a run stopped by a bad image resumes
  from its checkpoint with config.data.skip_corrupt_images turned on."""

  def __init__(self, source):
    self.source = source
    self.bad = {}  # index -> error, found by this process; not read again

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    _check_index(index, len(self))
    n = len(self.source)
    for offset in range(n):
      i = (index + offset) % n
      if i in self.bad:
        continue
      try:
        record = self.source[i]
      except CorruptImageError as e:
        if self.bad.setdefault(i, e) is e:  # atomic: the kNN feature threads share this source
          logging.warning('%s; records that read it get the next readable image instead '
                          '(config.data.skip_corrupt_images)', e)
        continue
      record['corrupt'] = np.int32(offset > 0)
      return record
    raise CorruptImageError(f'no readable image in {self.source!r}; {self.bad[0]}')

  def __repr__(self):
    return repr(self.source)


# PASCAL VOC 2007 for classification: the VOC07 SVM benchmarks (jssl/evaluate/svm_voc.py) and the feature tools
VOC_CLASSES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
               'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train',
               'tvmonitor')
VOC_SPLITS = ('trainval', 'test')


def resolve_voc_root(root) -> str:
  """The VOC2007 directory (the one holding JPEGImages/ and ImageSets/Main/): `root` itself, or root/VOC2007, or
  root/VOCdevkit/VOC2007."""
  root = os.fspath(root)
  for candidate in (root, os.path.join(root, 'VOC2007'), os.path.join(root, 'VOCdevkit', 'VOC2007')):
    if os.path.isdir(os.path.join(candidate, 'ImageSets', 'Main')):
      return candidate
  if not os.path.isdir(root):
    raise DataNotFoundError(f'data not found: {root} (--voc_root: the VOCdevkit/VOC2007 directory)')
  raise DataNotFoundError(f'data not found: {os.path.join(root, "ImageSets", "Main")} (--voc_root must be the '
                          'VOCdevkit/VOC2007 directory, holding JPEGImages/ and ImageSets/Main/)')


def read_voc_labels(root, split):
  """(image ids, labels [N, 20] int8) of a split from ImageSets/Main/<class>_<split>.txt, in the order of the first
  class's file; labels as VOC writes them: 1 present, -1 absent, 0 present but only as 'difficult' objects."""
  if split not in VOC_SPLITS:
    raise ValueError(f"VOC2007 split: unknown '{split}'; valid: {', '.join(VOC_SPLITS)}")
  ids, columns = None, []
  for name in VOC_CLASSES:
    path = os.path.join(root, 'ImageSets', 'Main', f'{name}_{split}.txt')
    if not os.path.isfile(path):
      raise DataNotFoundError(f'data not found: {path} (the {name} labels of the VOC2007 {split} split)')
    entries = {}
    with open(path) as f:
      for line_number, line in enumerate(f, start=1):
        parts = line.split()
        if not parts:
          continue
        if len(parts) != 2 or parts[1] not in ('1', '-1', '0'):
          raise ValueError(f'{path}:{line_number}: expected "<image id> <1|-1|0>", got {line.rstrip()!r}')
        entries[parts[0]] = int(parts[1])
    if ids is None:
      ids = list(entries)
    elif set(entries) != set(ids):
      odd = sorted(set(entries) ^ set(ids))[0]
      raise ValueError(f'{path}: lists other images than {VOC_CLASSES[0]}_{split}.txt (e.g. {odd})')
    if not entries:
      raise ValueError(f'{path}: no entries')
    if 1 not in entries.values():
      raise ValueError(f"{path}: class '{name}' has no positive image in the {split} split")
    columns.append([entries[i] for i in ids])
  return ids, np.asarray(columns, np.int8).T


class VOC2007Source:
  """PASCAL VOC 2007 for classification: records {'image', 'label': int32 [20] (1 / -1 / 0 = difficult, see
  `read_voc_labels`), 'index'}; `root` as `resolve_voc_root` takes it."""

  def __init__(self, root, split='trainval'):
    self.root = resolve_voc_root(root)
    self.split = split
    self.ids, self.labels = read_voc_labels(self.root, split)
    self.paths = [os.path.join(self.root, 'JPEGImages', f'{i}.jpg') for i in self.ids]
    missing = [p for p in self.paths if not os.path.isfile(p)]
    if missing:
      raise DataNotFoundError(f'data not found: {missing[0]} (and {len(missing) - 1} more of the '
                              f'{len(self.paths)} {split} images)' if len(missing) > 1 else
                              f'data not found: {missing[0]} (a {split} image)')

  def __len__(self):
    return len(self.ids)

  def __getitem__(self, index):
    _check_index(index, len(self))
    return {'image': _read_image(self.paths[index]), 'label': self.labels[index].astype(np.int32),
            'index': np.int64(index)}

  def __repr__(self):
    return f'VOC2007Source({self.root!r}, split={self.split!r}, {len(self)} images)'


def _tfds_data_dir(data_dir):
  if data_dir:
    return os.fspath(data_dir)
  return os.environ.get('TFDS_DATA_DIR') or os.path.expanduser(
      '~/tensorflow_datasets')


class TfdsSource:
  """A TFDS dataset prepared with file_format='array_record' (random access).

  Reading needs tensorflow-datasets but not TensorFlow. Nothing is downloaded:
  prepare first, e.g. `tfds build imagenet2012 --file_format=array_record`.
  Single-channel images are repeated to RGB; no 'label' feature -> -1.
  """

  def __init__(self, name, split='train', data_dir=None):
    import tensorflow_datasets as tfds  # Slow import; only this source needs it.
    data_dir = _tfds_data_dir(data_dir)
    # name may be 'dataset', 'dataset/config' or 'dataset:version'.
    dataset_dir = os.path.join(data_dir, name.split(':')[0].split('/')[0])
    if not os.path.isdir(dataset_dir):
      raise DataNotFoundError(f'data not found: {dataset_dir} (tfds dataset '
                              f'{name!r} in data_dir {data_dir})')
    try:
      self.data = tfds.data_source(name, split=split, data_dir=data_dir,
                                   download=False)
    except NotImplementedError:
      raise ValueError(
          f'tfds dataset {name!r} in {data_dir} is not prepared as '
          f'array_record, which random access needs; rebuild it with `tfds '
          f'build {name} --file_format=array_record`') from None
    except (ValueError, AssertionError) as e:  # Unknown split, bad name, ...
      lines = str(e).strip().splitlines()  # tfds appends long name lists.
      first_line = lines[0] if lines else type(e).__name__
      raise ValueError(f'tfds dataset {name!r} in {data_dir}: '
                       f'{first_line}') from None
    features = self.data.dataset_info.features
    if 'image' not in features:
      raise ValueError(f'tfds dataset {name!r} has no "image" feature; its '
                       f'features are {sorted(features.keys())}')
    self.has_label = 'label' in features
    self.name, self.split, self.data_dir = name, split, data_dir

  def __len__(self):
    return len(self.data)

  def __getitem__(self, index):
    _check_index(index, len(self))
    example = self.data[index]
    label = example['label'] if self.has_label else -1
    image = _to_rgb(example['image'], f'tfds {self.name} record {index}')
    return _record(image, label, index)

  def __repr__(self):
    return (f'TfdsSource({self.name!r}, split={self.split!r}, '
            f'data_dir={self.data_dir!r}, {len(self)} records)')


def _get(cfg, key, default=None):
  """cfg.get for dicts and ml_collections ConfigDicts; None -> default."""
  value = cfg.get(key, None)
  return default if value is None else value


def _require(path, key, what, cfg_path):
  """Raises the CLI-facing DataNotFoundError when `path` does not exist."""
  if not os.path.exists(path):
    raise DataNotFoundError(
        f'data not found: {path} ({cfg_path}.{key}); point --{cfg_path}.{key} '
        f"at {what}, or run the ':demo' variant which uses the embedded "
        f'digits dataset')


def _require_split(dataset, split_name, valid, key, cfg_path):
  """Raises the CLI-facing DataNotFoundError for a split `dataset` lacks."""
  if split_name not in valid:
    raise DataNotFoundError(
        f'data not found: {dataset} has no split {split_name!r} '
        f'({cfg_path}.{key}); valid: {", ".join(valid)}')


def build_source(cfg, split, cfg_path='config.data'):
  """The source for role `split` ('train' or 'val') as configured by `cfg`.

  `cfg` is `config.data` (dict or ConfigDict; fields in the module docstring);
  `cfg_path` is only used to name config keys in error messages.
  """
  source = _build_source(cfg, split, cfg_path)
  if _get(cfg, 'skip_corrupt_images', False):
    return SkipCorruptImages(source)
  return source


def _build_source(cfg, split, cfg_path):
  if split not in ('train', 'val'):
    raise ValueError(f"build_source split must be 'train' or 'val', got "
                     f'{split!r}')
  name = _get(cfg, 'name')
  if name not in SOURCE_NAMES:
    raise ValueError(f'unknown {cfg_path}.name {name!r}; valid names: '
                     f'{", ".join(SOURCE_NAMES)}')
  split_key = f'{split}_split'
  root = _get(cfg, 'root')
  if name != 'digits' and name != 'tfds' and not root:
    raise ValueError(f'{cfg_path}.root must be set for {cfg_path}.name '
                     f'{name!r}')

  subset_key = f'{split}_subset_file'
  subset_file = _get(cfg, subset_key)
  if subset_file and name != 'imagefolder':
    raise ValueError(f'{cfg_path}.{subset_key} is for {cfg_path}.name '
                     f"'imagefolder', not {name!r} (for 'imagelist', point "
                     f'{cfg_path}.{split}_ann_file at the list)')

  if name == 'digits':
    default_split = 'train' if split == 'train' else 'test'
    split_name = _get(cfg, split_key, default_split)
    _require_split(name, split_name, ('test', 'train'), split_key, cfg_path)
    return DigitsSource(split_name, size=_get(cfg, 'image_size', 32))

  if name in ('imagefolder', 'imagelist'):
    image_dir = os.path.join(root, _get(cfg, split_key, split))
    if name == 'imagefolder':
      _require(root, 'root', 'a folder with train/ and val/ class-folder '
               'splits (e.g. ImageNet)', cfg_path)
      _require(image_dir, split_key, f'the sub-folder of {root} holding the '
               f'{split} images', cfg_path)
      if subset_file:
        subset_file = os.path.join(root, subset_file)
        _require(subset_file, subset_key, "a split file (SimCLR's "
                 "1percent.txt / 10percent.txt, or MMSelfSup's "
                 'meta/train_1percent.txt)', cfg_path)
      return ImageFolderSource(image_dir, subset_file,
                               f'{cfg_path}.{subset_key}')
    ann_key = f'{split}_ann_file'
    ann_file = os.path.join(root, _get(cfg, ann_key, f'meta/{split}.txt'))
    _require(root, 'root', 'an MMSelfSup-style data root (e.g. '
             'data/imagenet with meta/ and train/)', cfg_path)
    _require(ann_file, ann_key, 'a list file of "path [label]" lines',
             cfg_path)
    _require(image_dir, split_key, f'the sub-folder of {root} holding the '
             f'{split} images', cfg_path)
    return ImageListSource(image_dir, ann_file)

  if name in ('cifar10', 'cifar100'):
    cls = Cifar10Source if name == 'cifar10' else Cifar100Source
    _require(root, 'root', f'the folder holding {cls.folder}', cfg_path)
    default_split = 'train' if split == 'train' else 'test'
    split_name = _get(cfg, split_key, default_split)
    _require_split(name, split_name, sorted(cls.files), split_key,
                   cfg_path)
    return cls(root, split_name)

  # tfds
  tfds_name = _get(cfg, 'tfds_name')
  if not tfds_name:
    raise ValueError(f"{cfg_path}.tfds_name must be set for {cfg_path}.name "
                     f"'tfds'")
  data_dir = _tfds_data_dir(root)
  _require(data_dir, 'root', 'a TFDS data_dir', cfg_path)
  _require(os.path.join(data_dir, tfds_name.split(':')[0].split('/')[0]),
           'root', f'a TFDS data_dir holding {tfds_name} prepared with '
           f'--file_format=array_record', cfg_path)
  default_split = 'train' if split == 'train' else 'validation'
  return TfdsSource(tfds_name, _get(cfg, split_key, default_split), data_dir)
