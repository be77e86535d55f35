"""jssl.tools.mae_visualize's parts without a model: --index reads the run's own data as a file would be read, and
the picture's four panels are labelled (the whole tool after the MAE demo: tests/test_demo.py)."""
import types

import numpy as np
from PIL import Image

from jssl.config import load_config_file
from jssl.data import sources
from jssl.tools import mae_visualize


def test_index_gives_the_view_the_same_image_file_gives(tmp_path):
  config = load_config_file('configs/mae.py:demo')
  record = sources.build_source(config.data, 'val')[3]['image']
  Image.fromarray(record).save(tmp_path / 'digit.png')
  from_file = mae_visualize.load_image(tmp_path / 'digit.png', 32, 'bicubic')
  from_index = mae_visualize.load_record(config, 'val', 3, 32, 'bicubic')
  assert from_index.shape == (32, 32, 3) and from_index.dtype == np.uint8
  np.testing.assert_array_equal(from_index, from_file)
  np.testing.assert_array_equal(from_index, record)


def test_picture_has_a_label_over_each_panel():
  method = types.SimpleNamespace(patch_size=4)
  image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  mask = np.zeros((1, 16), np.float32)
  mask[0, :12] = 1
  mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
  recon = np.full((1, 16, 16, 3), 0.5, np.float32)
  png = mae_visualize.picture(method, image, recon, mask, mean, std, panel=224)  # 14x: 224-px panels
  width, gap = 224, 28
  assert png.shape[1] == 4 * width + 3 * gap and png.shape[0] > 224
  labels, body = png[:-224], png[-224:]
  assert (labels == 255).mean() > 0.5  # black text on a white strip
  for i, label in enumerate(mae_visualize.LABELS):
    column = labels[:, i * (width + gap):i * (width + gap) + width]
    assert (column < 128).any(), label
    np.testing.assert_array_equal(column, mae_visualize.label_strip(width, label))  # the text fits, unshrunk
  np.testing.assert_array_equal(body[::14, :width:14], image)  # the original, upscaled
