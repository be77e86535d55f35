"""MAE reconstruction picture of a trained workdir: original | masked | reconstruction | reconstruction with the
visible patches pasted back, side by side in one PNG, each panel labelled above it.

  python -m jssl.tools.mae_visualize --index=0 --workdir=workdirs/mae_demo --out=mae.png   # the run's own data
  python -m jssl.tools.mae_visualize IMAGE --workdir=workdirs/mae_demo --out=mae.png [--seed=0] [--step=N]

The image is a file, or with --index=N record N of the run's own data (its config.data, the --split role: 'val' by
default, i.e. the digits' test split for the demos). It is resized (shorter side) and center-cropped to the model's
input size, normalized as in training, and masked at the config's ratio by a key drawn from --seed. With the
norm-pix loss the model predicts each patch normalized by its own mean and variance; like MMSelfSup's MAE visualization,
the picture puts those statistics of the original patch back (so a masked patch shows the right mean colour even at
random init: the error below is what says whether the model learned anything).

Printed (and written with --json): the mean squared error on the masked patches, in normalized-pixel units, of
the reconstruction, of the same model at random init (--compare_random_init), and of predicting every masked
patch's own mean (the floor a norm-pix model must beat); averaged over --num_masks masks of the image.
"""
import json
import os
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'A jssl workdir of an MAE run (config.json + checkpoints/).')
flags.DEFINE_string('out', None, 'The PNG to write.')
flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
flags.DEFINE_integer('seed', 0, 'Seed of the masks.')
flags.DEFINE_integer('num_masks', 16, 'Masks the error is averaged over (the picture shows the first).')
flags.DEFINE_integer('panel', 224, 'Minimum side of each panel in the PNG (nearest-neighbour upscaling).')
flags.DEFINE_bool('random_init', False, 'Use the randomly initialized model instead of the checkpoint.')
flags.DEFINE_bool('compare_random_init', True, 'Also report the error of the model at random init.')
flags.DEFINE_string('json', None, 'Also write the figures to this JSON file.')
flags.DEFINE_integer('index', None, "Instead of IMAGE: record N of the run's own data (config.data, --split).")
flags.DEFINE_enum('split', 'val', ['train', 'val'], "--index's role of config.data ('val': the digits' test split).")

LABELS = ('original', 'masked', 'reconstruction', 'reconstruction + visible')


def fail(message):
  print(f'mae_visualize: error: {message}', file=sys.stderr, flush=True)
  sys.exit(2)


def load_image(path, size, interpolation):
  """The image as the model sees it at evaluation: shorter side to `size`, center crop, uint8 [size, size, 3]."""
  import numpy as np
  from PIL import Image, UnidentifiedImageError
  try:
    image = np.asarray(Image.open(path).convert('RGB'))
  except FileNotFoundError:
    fail(f'{path}: no such image file')
  except (UnidentifiedImageError, OSError) as e:
    fail(f'{path}: not a readable image ({e})')
  return eval_view(image, size, interpolation)


def eval_view(image, size, interpolation):
  from jssl.data import transforms
  return transforms.ResizeCenterCrop(resize=size, crop=size, interpolation=interpolation).map({'image': image})['image']


def load_record(config, split, index, size, interpolation):
  """Record `index` of the run's own data (config.data in role `split`), as load_image gives a file."""
  from jssl.data import sources
  try:
    source = sources.build_source(config.data, split)
    if not 0 <= index < len(source):
      fail(f"--index={index}: the run's {split} data ({config.data.name}) has {len(source)} images: "
           f'0..{len(source) - 1}')
    image = source[index]['image']
  except (sources.DataNotFoundError, ValueError) as e:  # ValueError: a bad config.data field, a corrupt image
    fail(f"--index: the run's {split} data: {e}")
  return eval_view(image, size, interpolation)


def reconstruct(method, params, model_state, images, key):
  """(prediction in image space (normalized pixels) [B, H, W, C], mask [B, N], per-patch target stats)."""
  import jax.numpy as jnp
  from jssl.data.masks import random_masking
  from jssl.methods.mae import patchify, unpatchify
  ids_keep, mask, ids_restore = random_masking(key, images.shape[0], method.num_patches, method.mask_ratio)
  pred = method.net.apply({'params': params, **model_state}, images, ids_keep, ids_restore, train=False)
  patches = patchify(images, method.patch_size)
  if method.norm_pix:  # back from per-patch normalized units with the original patch's statistics
    mean = patches.mean(axis=-1, keepdims=True)
    var = patches.var(axis=-1, keepdims=True, ddof=1)
    pred = pred * jnp.sqrt(var + 1e-6) + mean
  else:
    mean = jnp.zeros_like(patches[..., :1])
  return unpatchify(pred, method.patch_size), mask, jnp.broadcast_to(mean, patches.shape)


def masked_error(method, recon, images, mask):
  from jssl.methods.mae import patchify
  err = ((patchify(recon, method.patch_size) - patchify(images, method.patch_size)) ** 2).mean(axis=-1)
  return float((err * mask).sum() / mask.sum())


def label_strip(width, label):
  """A white strip `width` wide with `label` centred in black, the font shrunk to fit (uint8 [h, width, 3])."""
  import numpy as np
  from PIL import Image, ImageDraw, ImageFont
  size = max(10, min(24, width // 14))
  font = ImageFont.load_default(size=size)
  while font.getlength(label) > width - 2 and size > 6:
    size -= 1
    font = ImageFont.load_default(size=size)
  left, top, right, bottom = font.getbbox(label)
  strip = Image.new('RGB', (width, size + 6), (255, 255, 255))
  ImageDraw.Draw(strip).text(((width - right - left) / 2, (size + 6 - bottom - top) / 2), label, fill=(0, 0, 0),
                             font=font)
  return np.asarray(strip)


def picture(method, image_u8, recon, mask, mean, std, panel):
  """uint8 [label strip + H, 4W + gaps, 3]: original | masked (grey) | reconstruction | reconstruction + visible
  patches, each labelled (LABELS) in a white strip above it."""
  import numpy as np
  from jssl.methods.mae import unpatchify
  p, size = method.patch_size, image_u8.shape[0]
  pixels = np.clip((np.asarray(recon[0]) * std + mean) * 255., 0, 255).astype(np.uint8)
  masked_px = np.asarray(unpatchify(np.broadcast_to(np.asarray(mask)[:, :, None], (1, mask.shape[1], p * p * 3)),
                                    p))[0] > 0.5
  masked = np.where(masked_px, np.uint8(128), image_u8)
  pasted = np.where(masked_px, pixels, image_u8)
  scale = max(1, -(-panel // size))
  panels = [np.kron(x, np.ones((scale, scale, 1), np.uint8)) for x in (image_u8, masked, pixels, pasted)]
  strips = [label_strip(size * scale, label) for label in LABELS]
  height = max(s.shape[0] for s in strips)
  columns = [np.concatenate([np.pad(s, ((0, height - s.shape[0]), (0, 0), (0, 0)), constant_values=255), x])
             for s, x in zip(strips, panels)]
  gap = np.full((columns[0].shape[0], max(2, scale * 2), 3), 255, np.uint8)
  return np.concatenate([columns[0], gap, columns[1], gap, columns[2], gap, columns[3]], axis=1)


def main(argv):
  if not FLAGS['verbosity'].present:  # orbax/jax INFO chatter off unless asked for (-v 0)
    logging.set_verbosity(logging.WARNING)
  if len(argv) > 2 or (len(argv) == 2) == (FLAGS.index is not None):
    fail('give one IMAGE or --index=N (an image of the run\'s own data), e.g. python -m jssl.tools.mae_visualize '
         '--index=0 --workdir=W --out=mae.png')
  if not FLAGS.workdir or not FLAGS.out:
    fail('--workdir and --out are required')
  import jax
  import jax.numpy as jnp
  import numpy as np
  from PIL import Image
  from jssl import checkpoint
  from jssl.convert.errors import ConversionError
  from jssl.pretrained import load_config
  from jssl.train.loop import Trainer
  try:
    config = load_config(FLAGS.workdir)
  except ConversionError as e:
    fail(str(e))
  if config.method != 'mae':
    fail(f"{FLAGS.workdir}: config.method is '{config.method}'; this tool draws MAE reconstructions (method 'mae')")
  size = config.data.views[0]['size']
  interpolation = config.eval.get('interpolation', 'bicubic')
  if FLAGS.index is None:
    image_u8, image_name = load_image(argv[1], size, interpolation), argv[1]
  else:
    image_u8 = load_record(config, FLAGS.split, FLAGS.index, size, interpolation)
    image_name = f'{FLAGS.split} record {FLAGS.index} of {config.data.name}'
  trainer = Trainer(config, FLAGS.workdir, num_records=1, devices=jax.devices()[:1])
  random_state = trainer.init_state(jax.random.PRNGKey(config.seed))
  if FLAGS.random_init:
    state, step = random_state, 0
  else:
    try:
      state, step = checkpoint.restore_params(FLAGS.workdir, trainer.abstract_state, FLAGS.step)
    except FileNotFoundError as e:
      fail(f'--workdir: {e}')
  method = trainer.method
  mean, std = np.asarray(config.data.mean, np.float32), np.asarray(config.data.std, np.float32)
  images = jnp.asarray(np.broadcast_to((image_u8 / 255. - mean) / std, (FLAGS.num_masks, size, size, 3)),
                       jnp.float32)
  run = jax.jit(lambda s, x, key: reconstruct(method, s.params, s.model_state, x, key))
  key = jax.random.key(FLAGS.seed)
  recon, mask, patch_mean = run(state, images, key)
  from jssl.methods.mae import unpatchify
  result = {'image': image_name, 'workdir': FLAGS.workdir, 'step': int(step), 'mask_ratio': method.mask_ratio,
            'masked_mse': masked_error(method, recon, images, mask),
            'masked_mse_patch_mean': masked_error(method, unpatchify(patch_mean, method.patch_size), images, mask)}
  if FLAGS.compare_random_init and not FLAGS.random_init:
    result['masked_mse_random_init'] = masked_error(method, run(random_state, images, key)[0], images, mask)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  Image.fromarray(picture(method, image_u8, recon[:1], mask[:1], mean, std, FLAGS.panel)).save(FLAGS.out)
  print(f'wrote {FLAGS.out} ({image_name}, step {step}): masked-patch MSE {result["masked_mse"]:.4f}'
        + (f' | random init {result["masked_mse_random_init"]:.4f}' if 'masked_mse_random_init' in result else '')
        + f' | each patch\'s own mean {result["masked_mse_patch_mean"]:.4f} (normalized pixels, '
        f'{FLAGS.num_masks} masks)', flush=True)
  if FLAGS.json:
    with open(FLAGS.json, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  from jssl.config import parse_flags
  app.run(main, flags_parser=parse_flags)
