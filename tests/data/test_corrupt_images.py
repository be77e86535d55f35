"""Unreadable image files (a truncated JPEG, a zero-byte PNG, a listed file that is gone): by default a one-line
error naming the file, also from `python -m jssl.main`; with config.data.skip_corrupt_images the next readable
record stands in, every read of a bad file is counted and the run reports the count as train/corrupt_images."""
import glob
import io
import os
import struct

import numpy as np
from PIL import Image
import pytest

from jssl.data import loader, sources
from tests.conftest import NO_EVALS_ARGS, run_python

TRUNCATED, EMPTY = 'c0/d03_truncated.jpg', 'c1/d05_empty.png'


def _write_pngs(folder, count):
  from sklearn.datasets import load_digits
  digits = load_digits()
  for i in range(count):
    path = os.path.join(folder, f'c{digits.target[i] % 2}', f'd{i:02d}.png')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.uint8(digits.images[i] * 15)).resize((16, 16)).convert('RGB').save(path)


def _write_bad(folder):
  """A JPEG cut in half and a zero-byte PNG."""
  buffer = io.BytesIO()
  Image.fromarray(np.random.RandomState(0).randint(0, 255, (16, 16, 3), np.uint8)).save(buffer, 'JPEG')
  for name, data in ((TRUNCATED, buffer.getvalue()[:len(buffer.getvalue()) // 2]), (EMPTY, b'')):
    os.makedirs(os.path.join(folder, os.path.dirname(name)), exist_ok=True)
    with open(os.path.join(folder, name), 'wb') as f:
      f.write(data)


@pytest.fixture
def data_root(tmp_path):
  """root/{train,val}/c{0,1}/: 16 digits PNGs each, and train/ also holds the two bad files."""
  root = tmp_path / 'data'
  for split in ('train', 'val'):
    _write_pngs(str(root / split), 16)
  _write_bad(str(root / 'train'))
  return root


def _bad_indices(source):
  return [source.paths.index(os.path.join(source.root, name)) for name in (TRUNCATED, EMPTY)]


def test_default_error_names_file_and_reason(data_root):
  source = sources.build_source({'name': 'imagefolder', 'root': str(data_root)}, 'train')
  truncated, empty = _bad_indices(source)
  with pytest.raises(sources.CorruptImageError) as error:
    source[truncated]
  message = str(error.value)
  assert message.startswith(f'cannot read image {data_root}/train/{TRUNCATED}: ') and '\n' not in message
  assert message.split(': ', 1)[1]  # PIL's reason
  with pytest.raises(sources.CorruptImageError, match=f'{EMPTY}: empty file'):
    source[empty]
  source[0]  # a good one still reads


def test_skip_replaces_by_next_readable_record(data_root):
  plain = sources.ImageFolderSource(data_root / 'train')
  skip = sources.build_source({'name': 'imagefolder', 'root': str(data_root), 'skip_corrupt_images': True}, 'train')
  assert isinstance(skip, sources.SkipCorruptImages) and len(skip) == len(plain)
  assert repr(skip) == repr(plain)  # grain's resume check: a run stopped by a bad file resumes with the option on
  bad = _bad_indices(plain)
  for i in range(len(plain)):
    substitute = i
    while substitute in bad:
      substitute += 1
    record = skip[i]
    assert int(record['corrupt']) == (i in bad) and int(record['index']) == substitute
    np.testing.assert_array_equal(record['image'], plain[substitute]['image'])
    assert int(record['label']) == int(plain[substitute]['label'])


def test_skip_wraps_around_and_fails_when_nothing_is_readable(tmp_path):
  _write_pngs(str(tmp_path / 'good'), 1)  # c0/d00.png
  _write_bad(str(tmp_path / 'good'))  # sorted after it: c0/d03_truncated.jpg, c1/d05_empty.png
  skip = sources.SkipCorruptImages(sources.ImageFolderSource(tmp_path / 'good'))
  assert [int(skip[i]['index']) for i in range(3)] == [0, 0, 0]
  _write_bad(str(tmp_path / 'bad'))
  with pytest.raises(sources.CorruptImageError, match=f'no readable image in ImageFolderSource.*{TRUNCATED}'):
    sources.SkipCorruptImages(sources.ImageFolderSource(tmp_path / 'bad'))[0]


def test_image_list_missing_file_is_skipped_or_named(tmp_path):
  _write_pngs(str(tmp_path / 'train'), 2)
  (tmp_path / 'meta').mkdir()
  (tmp_path / 'meta' / 'train.txt').write_text('c0/d00.png 0\nc1/gone.png 1\nc1/d01.png 1\n')
  cfg = {'name': 'imagelist', 'root': str(tmp_path)}
  with pytest.raises(sources.CorruptImageError, match=r'gone.png: file not found \(listed in .*train.txt line 2\)'):
    sources.build_source(cfg, 'train')[1]
  record = sources.build_source({**cfg, 'skip_corrupt_images': True}, 'train')[1]
  assert int(record['index']) == 2 and int(record['corrupt']) == 1


def test_val_source_skips_only_with_the_option(data_root):
  _write_bad(str(data_root / 'val'))
  cfg = {'name': 'imagefolder', 'root': str(data_root)}
  val = sources.build_source(cfg, 'val')
  with pytest.raises(sources.CorruptImageError):
    [val[i] for i in range(len(val))]
  val = sources.build_source({**cfg, 'skip_corrupt_images': True}, 'val')
  assert sum(int(val[i]['corrupt']) for i in range(len(val))) == 2


def test_loader_batches_keep_their_size_and_count(data_root):
  skip = sources.build_source({'name': 'imagefolder', 'root': str(data_root), 'skip_corrupt_images': True}, 'train')
  batches = list(loader.make_loader(skip, [], 6, seed=0, num_epochs=1, shard_by_process=False))
  assert [len(b['index']) for b in batches] == [6, 6, 6]  # 18 records, none dropped
  assert sum(int(b['corrupt'].sum()) for b in batches) == 2  # each bad file is read once per epoch
  read = np.concatenate([b['index'] for b in batches])
  assert not set(_bad_indices(skip.source)) & set(read.tolist()) and len(set(read.tolist())) == 16


def test_iterator_of_a_run_without_the_option_resumes_with_it(data_root):
  plain = sources.build_source({'name': 'imagefolder', 'root': str(data_root)}, 'train')
  skip = sources.build_source({'name': 'imagefolder', 'root': str(data_root), 'skip_corrupt_images': True}, 'train')
  good = [i for i in range(len(plain)) if i not in _bad_indices(plain)]
  it = iter(loader.make_loader(sources.ReorderedSource(plain, good[:4]), [], 2, seed=0, shard_by_process=False))
  next(it)  # the run read a batch, checkpointed, then hit a bad file
  resumed = loader.restore_iterator(
      loader.make_loader(sources.ReorderedSource(skip, good[:4]), [], 2, seed=0, shard_by_process=False),
      loader.iterator_state(it))
  np.testing.assert_array_equal(next(resumed)['index'], next(it)['index'])


def _scalars(workdir, tag):
  """(step, value) of a TensorBoard scalar, read from tensorboardX's event files (TFRecord framing)."""
  from tensorboardX.proto import event_pb2
  found = []
  for path in glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*')):
    with open(path, 'rb') as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      found += [(event.step, v.simple_value) for v in event.summary.value if v.tag == tag]
  return sorted(found)


RUN = ['-m', 'jssl.main', '--config=configs/mocov3.py:demo', '--config.data.name=imagefolder',
       '--config.backbone.kwargs.depth=1', '--config.backbone.kwargs.embed_dim=24',
       '--config.model.neck_hid_channels=32', '--config.model.neck_out_channels=16',
       '--config.model.pred_hid_channels=32', '--config.batch_size=8', '--config.log_every=1',
       *NO_EVALS_ARGS, '--config.checkpoint.every=100', '--config.data.val_split=val']


@pytest.mark.slow  # ~25 s on a busy 2-core machine: the Trainer is built before the first batch is read
@pytest.mark.parametrize('workers', [pytest.param(0, marks=pytest.mark.heavy), 1])  # 1: the error crosses grain's
# worker process (heavy: 0 workers, the same error without that crossing)
def test_cli_stops_with_one_line_naming_the_file(tmp_path, workers):
  _write_bad(str(tmp_path / 'data' / 'train'))  # only bad files: the first batch fails, before the train step compiles
  proc = run_python(RUN + [f'--config.data.root={tmp_path / "data"}', f'--workdir={tmp_path / "work"}',
                           '--config.total_steps=1', f'--config.data.workers={workers}',
                           '--config.batch_size=2'],  # the two files: a larger batch is refused before reading
                    check=False, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert lines[0].startswith(f'jssl: error: cannot read image {tmp_path}/data/train/c')
  assert TRUNCATED in lines[0] or f'{EMPTY}: empty file' in lines[0]
  assert 'skip_corrupt_images' in lines[0]


@pytest.mark.slow
def test_cli_skip_run_reports_the_count(data_root, tmp_path):
  work = tmp_path / 'work'
  steps = 3  # 24 records of 18: the whole first epoch, so every bad file is read at least once
  proc = run_python(RUN + [f'--config.data.root={data_root}', f'--workdir={work}', f'--config.total_steps={steps}',
                           '--config.data.skip_corrupt_images=True'], timeout=600)
  assert f'step {steps}/{steps}' in proc.stdout
  for name in (TRUNCATED, EMPTY):  # one warning per file
    assert sum(f'cannot read image {data_root}/train/{name}' in l for l in proc.stderr.splitlines()) == 1
  # the same records the run read: its sampler (seed, size, batch) without the crops
  skip = sources.build_source({'name': 'imagefolder', 'root': str(data_root), 'skip_corrupt_images': True}, 'train')
  it = iter(loader.make_loader(skip, [], 8, seed=0, shard_by_process=False))
  expected = np.cumsum([int(next(it)['corrupt'].sum()) for _ in range(steps)])
  assert expected[-1] >= 2
  assert _scalars(str(work), 'train/corrupt_images') == [(s + 1, float(c)) for s, c in enumerate(expected)]
