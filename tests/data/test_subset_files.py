"""Semi-supervised split files (config.data.train_subset_file): SimCLR's 1percent.txt / 10percent.txt names and
MMSelfSup's `path label` meta files keep only the listed images of an ImageNet-layout folder, with the labels the
full ImageFolder gives them; bad files are one-line errors naming the file, the line and the config field."""
import os

import numpy as np
import pytest
from PIL import Image

from jssl.config import load_config_file
from jssl.data import sources
from tests.conftest import run_python

SYNSETS = ('n01440764', 'n01443537', 'n02102040', 'n09999999')  # the last one: an empty class folder


@pytest.fixture
def imagenet(tmp_path):
  """data/imagenet/train/<synset>/<synset>_<i>.JPEG (3 images per class but the last), each a distinct colour."""
  for c, synset in enumerate(SYNSETS):
    os.makedirs(tmp_path / 'train' / synset)
    for i in range(3 if c < 3 else 0):
      Image.fromarray(np.full((5, 6, 3), 10 * c + i, np.uint8)).save(tmp_path / 'train' / synset / f'{synset}_{i}.png')
  (tmp_path / 'meta').mkdir()
  return tmp_path


def config_data(root, subset_file):
  return {'name': 'imagefolder', 'root': str(root), 'train_split': 'train', 'train_subset_file': subset_file}


def test_simclr_split_file_keeps_listed_images_with_full_folder_labels(imagenet):
  full = sources.ImageFolderSource(imagenet / 'train')
  (imagenet / '1percent.txt').write_text('n02102040_2.png\nn01440764_0.png\n\nn02102040_0.png\n')
  subset = sources.build_source(config_data(imagenet, '1percent.txt'), 'train')
  assert len(subset) == 3 and subset.classes == full.classes == list(SYNSETS)
  # sorted as the full folder sorts them; labels are the full folder's (class n09999999 stays label 3)
  assert [os.path.relpath(p, imagenet / 'train') for p in subset.paths] == [
      'n01440764/n01440764_0.png', 'n02102040/n02102040_0.png', 'n02102040/n02102040_2.png']
  full_label = dict(zip(full.paths, full.labels))
  assert subset.labels == [full_label[p] for p in subset.paths] == [0, 2, 2]
  record = subset[2]
  assert int(record['label']) == 2 and int(record['index']) == 2
  np.testing.assert_array_equal(record['image'], 22)  # class 2, image 2
  assert 'subset_file' in repr(subset)


def test_mmselfsup_meta_file_and_absolute_path(imagenet, tmp_path_factory):
  meta = imagenet / 'meta' / 'train_1percent.txt'
  meta.write_text('n01443537/n01443537_1.png 1\nn01440764/n01440764_2.png 0\n')
  subset = sources.build_source(config_data(imagenet, 'meta/train_1percent.txt'), 'train')
  assert subset.labels == [0, 1]
  np.testing.assert_array_equal(subset[1]['image'], 11)
  elsewhere = tmp_path_factory.mktemp('splits') / '10percent.txt'  # absolute: not under root
  elsewhere.write_text('n01443537/n01443537_1.png\n')
  assert len(sources.build_source(config_data(imagenet, str(elsewhere)), 'train')) == 1


@pytest.mark.parametrize('content, message', [
    ('n01440764_7.png\n', r'data not found: .*n01440764/n01440764_7.png, listed in '
                          r'config.data.train_subset_file: .*1percent.txt line 1'),
    ('n01440764_0.png\nn07777777_1.png\n', r"line 2: class 'n07777777' of n07777777_1.png is not a class folder"),
    ('n01443537/n01443537_1.png 0\n', r'line 1: label 0 of n01443537/n01443537_1.png, but its folder n01443537 is '
                                      r'class 1'),
    ('a b c\n', r'line 1: expected "name" or "path \[label\]"'),
    ('\n\n', r'config.data.train_subset_file: .*1percent.txt lists no images'),
])
def test_bad_split_file_names_file_and_line(imagenet, content, message):
  (imagenet / '1percent.txt').write_text(content)
  with pytest.raises((sources.DataNotFoundError, ValueError), match=message):
    sources.build_source(config_data(imagenet, '1percent.txt'), 'train')


def test_missing_split_file_and_wrong_source(imagenet):
  with pytest.raises(sources.DataNotFoundError,
                     match=r'data not found: .*/10percent.txt \(config.data.train_subset_file\)'):
    sources.build_source(config_data(imagenet, '10percent.txt'), 'train')
  with pytest.raises(ValueError, match=r"config.data.train_subset_file is for config.data.name 'imagefolder'"):
    sources.build_source({'name': 'digits', 'train_subset_file': '1percent.txt'}, 'train')
  assert len(sources.build_source(config_data(imagenet, ''), 'train')) == 9  # '' keeps every image


def test_cli_missing_split_file_is_one_line(imagenet):
  """The field exists in every ImageNet config, and its mistakes end the CLI with one line and exit code 2."""
  assert load_config_file('configs/simclr.py').data.train_subset_file == ''
  for subset_file, needle in (('1percent.txt', '1percent.txt (config.data.train_subset_file)'),
                              ('bad.txt', 'bad.txt line 1: class')):
    (imagenet / 'bad.txt').write_text('n0_1.png\n')
    proc = run_python(['-m', 'jssl.main', '--config=configs/simclr.py', f'--workdir={imagenet / "run"}',
                       f'--config.data.root={imagenet}', f'--config.data.train_subset_file={subset_file}'],
                      check=False, timeout=300)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr[-2000:]
