"""Sources read real files written here: PNG/JPEG folders, list files, CIFAR
pickles in the published format, and a tiny array_record TFDS dataset."""

import os
import pickle

import numpy as np
from PIL import Image
import pytest

from jssl.data import sources


def _write_image(path, color, size=(6, 5), mode='RGB'):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = np.zeros((size[1], size[0], 3), np.uint8) + np.uint8(color)
  Image.fromarray(image).convert(mode).save(path)


def _check_record(record, index):
  assert set(record) == {'image', 'label', 'index'}
  assert record['image'].dtype == np.uint8 and record['image'].ndim == 3
  assert record['image'].shape[-1] == 3
  assert record['label'].dtype == np.int32 and record['label'].shape == ()
  assert record['index'].dtype == np.int64 and record['index'] == index


# Digits.


def test_digits_splits_are_fixed_disjoint_and_complete():
  from sklearn.datasets import load_digits
  digits = load_digits()
  train = sources.DigitsSource('train', size=8)
  test = sources.DigitsSource('test', size=8)
  assert (len(train), len(test)) == (1438, 359)
  assert len(train) + len(test) == len(digits.target)
  assert set(np.unique(test.labels)) == set(range(10))
  # Sample i is a test sample iff i % 5 == 4; pixels are 0..16 -> 0..255.
  test_ids = np.arange(4, len(digits.target), 5)
  train_ids = np.setdiff1d(np.arange(len(digits.target)), test_ids)
  for source, ids in ((train, train_ids), (test, test_ids)):
    for i in (0, 1, len(ids) - 1):
      record = source[i]
      _check_record(record, i)
      want = np.round(digits.images[ids[i]] * 255 / 16).astype(np.uint8)
      np.testing.assert_array_equal(record['image'][..., 0], want)
      np.testing.assert_array_equal(record['image'][..., 1], want)
      assert record['label'] == digits.target[ids[i]]


def test_digits_upsampled_is_deterministic_and_matches_original():
  small = sources.DigitsSource('train', size=8)
  big = sources.DigitsSource('train', size=32)
  again = sources.DigitsSource('train', size=32)
  record = big[7]
  _check_record(record, 7)
  assert record['image'].shape == (32, 32, 3)
  np.testing.assert_array_equal(record['image'], again[7]['image'])
  # Averaging 4x4 blocks recovers the 8x8 digit closely.
  blocks = record['image'][..., 0].reshape(8, 4, 8, 4).astype(float).mean(
      axis=(1, 3))
  original = small[7]['image'][..., 0].astype(float)
  assert np.corrcoef(blocks.ravel(), original.ravel())[0, 1] > 0.95


def test_digits_bad_split():
  with pytest.raises(ValueError, match="'val'"):
    sources.DigitsSource('val')


def test_index_out_of_range():
  source = sources.DigitsSource('test', size=8)
  with pytest.raises(IndexError, match='359'):
    source[len(source)]


# ImageFolder.


def test_image_folder(tmp_path):
  _write_image(str(tmp_path / 'cat' / 'b.png'), 10)
  _write_image(str(tmp_path / 'cat' / 'a.JPG'), 20)
  _write_image(str(tmp_path / 'dog' / 'x.jpeg'), 30, mode='L')
  _write_image(str(tmp_path / 'dog' / 'sub' / 'y.bmp'), 40)
  _write_image(str(tmp_path / 'emu' / 'z.webp'), 50)
  (tmp_path / 'dog' / 'notes.txt').write_text('not an image')
  source = sources.ImageFolderSource(tmp_path)
  assert source.classes == ['cat', 'dog', 'emu']
  assert len(source) == 5
  names = [os.path.relpath(p, tmp_path) for p in source.paths]
  assert names == ['cat/a.JPG', 'cat/b.png', 'dog/sub/y.bmp', 'dog/x.jpeg',
                   'emu/z.webp']
  assert [int(source[i]['label']) for i in range(5)] == [0, 0, 1, 1, 2]
  record = source[3]  # Grayscale JPEG -> RGB.
  _check_record(record, 3)
  assert record['image'].shape == (5, 6, 3)
  assert abs(int(record['image'].mean()) - 30) <= 2
  np.testing.assert_array_equal(source[1]['image'], 10)  # PNG is lossless.


def test_image_folder_missing_and_empty(tmp_path):
  missing = tmp_path / 'nope'
  with pytest.raises(sources.DataNotFoundError, match=str(missing)):
    sources.ImageFolderSource(missing)
  (tmp_path / 'empty_class').mkdir()
  with pytest.raises(sources.DataNotFoundError, match='no images'):
    sources.ImageFolderSource(tmp_path)


def test_image_folder_corrupt_image_names_file(tmp_path):
  (tmp_path / 'a').mkdir()
  (tmp_path / 'a' / 'bad.png').write_bytes(b'not a png')
  source = sources.ImageFolderSource(tmp_path)
  with pytest.raises(ValueError, match='bad.png'):
    source[0]


# ImageList.


def test_image_list_with_and_without_labels(tmp_path):
  _write_image(str(tmp_path / 'train' / 'n01' / 'a.JPEG'), 11)
  _write_image(str(tmp_path / 'train' / 'n02' / 'b.png'), 22)
  (tmp_path / 'meta').mkdir()
  (tmp_path / 'meta' / 'train.txt').write_text('n01/a.JPEG 3\n\nn02/b.png 7\n')
  (tmp_path / 'meta' / 'unlabeled.txt').write_text('n02/b.png\nn01/a.JPEG\n')
  labeled = sources.ImageListSource(tmp_path / 'train',
                                    tmp_path / 'meta' / 'train.txt')
  assert len(labeled) == 2
  assert [int(labeled[i]['label']) for i in range(2)] == [3, 7]
  _check_record(labeled[1], 1)
  np.testing.assert_array_equal(labeled[1]['image'], 22)
  unlabeled = sources.ImageListSource(tmp_path / 'train',
                                      tmp_path / 'meta' / 'unlabeled.txt')
  assert [int(unlabeled[i]['label']) for i in range(2)] == [-1, -1]
  np.testing.assert_array_equal(unlabeled[0]['image'], 22)


@pytest.mark.parametrize('bad_line, message', [
    ('a.png 1 2', 'expected "path'),
    ('a.png cat', 'label must be an integer'),
    ('a.png -3', 'label must be >= -1'),
])
def test_image_list_malformed_line_names_file_and_line(tmp_path, bad_line,
                                                       message):
  ann_file = tmp_path / 'list.txt'
  ann_file.write_text(f'a.png 0\n{bad_line}\n')
  with pytest.raises(ValueError, match=message) as error:
    sources.ImageListSource(tmp_path, ann_file)
  assert f'{ann_file}:2:' in str(error.value)


def test_image_list_missing_image_names_path_when_read(tmp_path):
  _write_image(str(tmp_path / 'ok.png'), 5)
  ann_file = tmp_path / 'list.txt'
  ann_file.write_text('ok.png 0\ngone.png 1\n')
  source = sources.ImageListSource(tmp_path, ann_file)
  source[0]
  with pytest.raises(FileNotFoundError, match='gone.png') as error:
    source[1]
  assert 'line 2' in str(error.value)


def test_image_list_missing_ann_file(tmp_path):
  with pytest.raises(sources.DataNotFoundError, match='train.txt'):
    sources.ImageListSource(tmp_path, tmp_path / 'meta' / 'train.txt')


# CIFAR.


def _write_cifar_batch(path, images, labels, label_key=b'labels'):
  # The published format: uint8 [N, 3072], each row R then G then B planes,
  # each plane 32x32 row-major; keys are bytes (Python 2 pickles).
  data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
  with open(path, 'wb') as f:
    pickle.dump({b'data': data, label_key: list(labels),
                 b'batch_label': b'test'}, f)


def _random_images(rng, n):
  return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_cifar10_pixel_layout_and_splits(tmp_path):
  rng = np.random.default_rng(0)
  folder = tmp_path / 'cifar-10-batches-py'
  folder.mkdir()
  train_images = [_random_images(rng, 2 + i % 2) for i in range(5)]
  for i, images in enumerate(train_images):
    _write_cifar_batch(folder / f'data_batch_{i + 1}', images,
                       [i] * len(images))
  test_images = _random_images(rng, 3)
  _write_cifar_batch(folder / 'test_batch', test_images, [9, 8, 7])
  # A hand-made pixel pins the layout: the 3072 vector is CHW row-major.
  raw = np.zeros((1, 3072), np.uint8)
  raw[0, 0 * 1024 + 2 * 32 + 5] = 200  # Red, row 2, column 5.
  raw[0, 2 * 1024 + 31 * 32 + 0] = 99  # Blue, row 31, column 0.
  with open(folder / 'test_batch', 'wb') as f:
    pickle.dump({b'data': np.concatenate([raw, test_images.transpose(
        0, 3, 1, 2).reshape(3, 3072)]), b'labels': [0, 9, 8, 7]}, f)

  for root in (tmp_path, folder):  # The parent or the folder itself.
    train = sources.Cifar10Source(root, 'train')
    assert len(train) == sum(len(x) for x in train_images)
    np.testing.assert_array_equal(
        np.stack([train[i]['image'] for i in range(len(train))]),
        np.concatenate(train_images))
    assert [int(train[i]['label']) for i in range(4)] == [0, 0, 1, 1]
  test = sources.Cifar10Source(tmp_path, 'test')
  assert len(test) == 4
  _check_record(test[0], 0)
  image = test[0]['image']
  assert image.shape == (32, 32, 3)
  assert image[2, 5, 0] == 200 and image[31, 0, 2] == 99
  assert int(image.sum()) == 299
  np.testing.assert_array_equal(test[1]['image'], test_images[0])
  assert [int(test[i]['label']) for i in range(4)] == [0, 9, 8, 7]


def test_cifar100(tmp_path):
  rng = np.random.default_rng(1)
  folder = tmp_path / 'cifar-100-python'
  folder.mkdir()
  images = _random_images(rng, 3)
  _write_cifar_batch(folder / 'train', images, [5, 55, 99],
                     label_key=b'fine_labels')
  _write_cifar_batch(folder / 'test', images[:1], [1],
                     label_key=b'fine_labels')
  train = sources.Cifar100Source(tmp_path, 'train')
  assert [int(train[i]['label']) for i in range(3)] == [5, 55, 99]
  np.testing.assert_array_equal(train[2]['image'], images[2])
  assert len(sources.Cifar100Source(folder, 'test')) == 1


def test_cifar_errors(tmp_path):
  with pytest.raises(sources.DataNotFoundError, match='cifar-10-batches-py'):
    sources.Cifar10Source(tmp_path, 'train')
  folder = tmp_path / 'cifar-10-batches-py'
  folder.mkdir()
  with pytest.raises(sources.DataNotFoundError, match='test_batch'):
    sources.Cifar10Source(tmp_path, 'test')
  with open(folder / 'test_batch', 'wb') as f:
    pickle.dump({b'data': np.zeros((1, 3072), np.uint8)}, f)
  with pytest.raises(ValueError, match="test_batch: missing key b'labels'"):
    sources.Cifar10Source(tmp_path, 'test')
  with pytest.raises(ValueError, match="'val'"):
    sources.Cifar10Source(tmp_path, 'val')


# TFDS.


def _prepare_tiny_tfds(data_dir):
  """Builds 'tiny_shapes' (train: 6, test: 2) as array_record in data_dir."""
  tfds = pytest.importorskip('tensorflow_datasets')
  pytest.importorskip('tensorflow')  # Only preparing needs TensorFlow.

  # Unregistered, so TfdsSource finds it by name in data_dir as it would a
  # dataset prepared elsewhere; also lets this run twice in one process.
  class TinyShapes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict({
              'image': tfds.features.Image(shape=(None, None, 3)),
              'label': tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples(6),
              'test': self._generate_examples(2)}

    def _generate_examples(self, n):
      for i in range(n):
        # Each image's value encodes its label, checked after reading back.
        image = np.full((4 + i, 5, 3), 10 * i, np.uint8)
        image[0, 0] = [i % 3, 0, 0]
        yield i, {'image': image, 'label': i % 3}

  TinyShapes(data_dir=str(data_dir), file_format='array_record'
             ).download_and_prepare()
  return 'tiny_shapes'


def test_tfds_reads_prepared_array_record(tmp_path):
  name = _prepare_tiny_tfds(tmp_path)
  train = sources.TfdsSource(name, 'train', data_dir=tmp_path)
  assert len(train) == 6
  records = [train[i] for i in range(len(train))]
  for i, record in enumerate(records):
    _check_record(record, i)
    assert record['image'][0, 0, 0] == record['label']
  # TFDS shuffles at preparation; every example comes back exactly once.
  assert sorted(r['image'].shape[0] for r in records) == list(range(4, 10))
  assert len(sources.TfdsSource(name, 'test', data_dir=tmp_path)) == 2
  with pytest.raises(ValueError, match="Unknown split 'validation'"):
    sources.TfdsSource(name, 'validation', data_dir=tmp_path)
  source = sources.build_source(
      {'name': 'tfds', 'tfds_name': name, 'root': str(tmp_path),
       'val_split': 'test'}, 'val')
  assert len(source) == 2


def test_tfds_missing_dataset(tmp_path):
  pytest.importorskip('tensorflow_datasets')
  with pytest.raises(sources.DataNotFoundError, match='imagenet2012'):
    sources.TfdsSource('imagenet2012', 'train', data_dir=tmp_path)


# build_source.


def test_build_source_digits_and_config_access():
  ml_collections = pytest.importorskip('ml_collections')
  cfg = ml_collections.ConfigDict({'name': 'digits', 'image_size': 16,
                                   'val_split': None})
  train = sources.build_source(cfg, 'train')
  val = sources.build_source(cfg, 'val')
  assert (len(train), len(val)) == (1438, 359)
  assert train[0]['image'].shape == (16, 16, 3)
  assert len(sources.build_source({'name': 'digits'}, 'val')) == 359


def test_build_source_file_formats(tmp_path):
  _write_image(str(tmp_path / 'train' / 'a' / '0.png'), 1)
  _write_image(str(tmp_path / 'train' / 'b' / '0.png'), 2)
  _write_image(str(tmp_path / 'val' / 'a' / '0.png'), 3)
  folder = sources.build_source({'name': 'imagefolder', 'root': tmp_path},
                                'train')
  assert isinstance(folder, sources.ImageFolderSource) and len(folder) == 2
  assert len(sources.build_source({'name': 'imagefolder', 'root': tmp_path},
                                  'val')) == 1
  (tmp_path / 'meta').mkdir()
  (tmp_path / 'meta' / 'train.txt').write_text('b/0.png\n')
  (tmp_path / 'meta' / 'mine.txt').write_text('a/0.png 4\n')
  listed = sources.build_source({'name': 'imagelist', 'root': tmp_path},
                                'train')
  assert len(listed) == 1 and listed[0]['label'] == -1
  listed = sources.build_source(
      {'name': 'imagelist', 'root': tmp_path, 'val_ann_file': 'meta/mine.txt'},
      'val')
  assert listed[0]['label'] == 4
  np.testing.assert_array_equal(listed[0]['image'], 3)


def test_build_source_missing_data_is_one_line_naming_path_and_key(tmp_path):
  root = tmp_path / 'imagenet'
  with pytest.raises(sources.DataNotFoundError) as error:
    sources.build_source({'name': 'imagefolder', 'root': str(root)}, 'train')
  message = str(error.value)
  assert '\n' not in message
  assert message.startswith(f'data not found: {root} (config.data.root)')
  assert ':demo' in message
  root.mkdir()
  with pytest.raises(sources.DataNotFoundError,
                     match=r'imagenet/val \(config.data.val_split\)'):
    sources.build_source({'name': 'imagefolder', 'root': str(root)}, 'val')
  with pytest.raises(sources.DataNotFoundError,
                     match=r'meta/train.txt \(config.data.train_ann_file\)'):
    sources.build_source({'name': 'imagelist', 'root': str(root)}, 'train')
  with pytest.raises(sources.DataNotFoundError, match='config.data.root'):
    sources.build_source({'name': 'cifar10', 'root': str(tmp_path / 'c')},
                         'train')
  with pytest.raises(sources.DataNotFoundError, match='config.data.root'):
    sources.build_source({'name': 'tfds', 'tfds_name': 'imagenet2012',
                          'root': str(root)}, 'train')


def test_build_source_bad_config():
  with pytest.raises(ValueError, match='valid names: digits, imagefolder'):
    sources.build_source({'name': 'imagenet'}, 'train')
  with pytest.raises(ValueError, match="'test'"):
    sources.build_source({'name': 'digits'}, 'test')
  with pytest.raises(ValueError, match='config.data.root must be set'):
    sources.build_source({'name': 'imagefolder'}, 'train')
  with pytest.raises(ValueError, match='config.data.tfds_name must be set'):
    sources.build_source({'name': 'tfds', 'root': '/tmp'}, 'train')
