"""MoCo v3, ViT-B/16, the reference recipe `mocov3_vit-base-p16_16xb256-amp-coslr-300e_in1k`.

Paper: Chen, Xie & He 2021, *An Empirical Study of Training Self-Supervised Vision Transformers*
Demo: python -m jssl.main --config=configs/mocov3.py:demo --workdir=workdirs/mocov3_demo
Demo result: kNN top-1 92.76% (random init 63.51%), linear probe 95.26% (86.63%), 16 px, digits test split
Demo runtime: 497 s, the whole command on 2 CPU cores shared with two other jobs (2026-12-03)

Batch 4096 (16 GPUs x 256), AdamW lr 2.4e-3 (= 1.5e-4 x 4096/256), torch's default betas (0.9, 0.999) and eps
1e-8, weight decay 0.1 on every trained parameter (one parameter group: norms, biases and the cls token too);
linear warmup from lr x 1e-4 over 40 epochs, then cosine to 0 at epoch 300. ViT-B/16 with a frozen patch
embedding (stop-gradient + no optimizer update) and fixed 2-D sin-cos positions, features = cls token;
projector NonLinearNeck 768-4096-4096-256 (3 fcs without biases, BN + ReLU between, last BN without affine),
predictor 256-4096-256 (2 fcs, last BN without affine); temperature 0.2, loss 2 T x (ctr(q1, k2) + ctr(q2, k1));
momentum encoder m from 0.99 to 1 on a cosine over the run (mmpretrain's base_momentum=0.01 is 1 - 0.99).
Views (BYOL's asymmetric pair): 224 crops of scale 0.08-1 (bilinear), flip, color jitter (0.4, 0.4, 0.2, 0.1)
p=0.8, grayscale p=0.2, then blur p=1.0 / solarize p=0.0 on view 1 and blur p=0.1 / solarize p=0.2 on view 2.
The reference trains with AMP (fp16 + dynamic loss scaling); here `dtype='bfloat16'` computes in bfloat16 with
float32 params (losses in float32).

Known differences: jssl's sin-cos table is MAE's, MoCo v3's is the same set of sin/cos columns in another order
(a fixed permutation of the embedding channels, tested in tests/methods/test_mocov3.py); the reference's
ImageNet pipeline decodes and crops with Pillow, here crops + flip on the host and the rest on the device.

Variants: `configs/mocov3.py` (ImageNet, ViT-B/16), `:vit_s` (`mocov3_vit-small-p16_16xb256-amp-coslr-300e_in1k`:
the reference's 'mocov3-small' ViT-S has 12 heads), `:resnet50` (`mocov3_resnet50_8xb512-amp-coslr-100e_in1k`:
LARS lr 9.6, wd 1e-6, T = 1.0, 2-layer projector 2048-4096-256 and a predictor without last BN, crops of scale
0.2-1, 10 warmup epochs of 100), `:demo` (embedded digits, a small ViT with 4-px patches, CPU minutes).
"""
from configs import common
from jssl.config import base_config

VARIANTS = ('demo', 'resnet50', 'vit_s')


def mocov3_data(size, scale, blur_kernel, digits=False):
  """BYOL's asymmetric pair of views; `augment` holds view 1's (the single-view default)."""
  views = common.views(size, scale, num=2, flip_prob=0.0 if digits else 0.5)
  per_view = common.byol_augment_per_view(blur_kernel)
  if digits:
    data = common.digits_data(views=views, augment=per_view[0], image_size=size)
  else:
    data = common.imagenet_data(views=views, augment=per_view[0])
  data.augment_per_view = per_view
  return data


def get_config(arg=None):
  arg = common.parse_arg(arg, __file__, VARIANTS)
  c = base_config('mocov3', 'vit_base', batch_size=4096, epochs=300)
  c.dtype = 'bfloat16'
  c.backbone.kwargs.update({'img_size': 224, 'patch_size': 16, 'pos_embed': 'sincos', 'output': 'cls',
                            'frozen_patch_embed': True})
  c.model.temperature = 0.2
  c.model.base_momentum = 0.99        # EMA weight of the old params at step 0, rising to 1 (cosine)
  c.model.update({'neck_hid_channels': 4096, 'neck_out_channels': 256, 'neck_num_layers': 3,
                  'pred_hid_channels': 4096, 'pred_with_last_bn': True})
  # one parameter group in the reference: decay on everything trained; stop_grad_conv1: the frozen patch
  # embedding is not even moved by weight decay
  c.optimizer = common.adamw(lr=2.4e-3, betas=(0.9, 0.999), weight_decay=0.1, no_decay_names=(), eps=1e-8,
                             exclude_1d_from_decay=False, frozen_names=('patch_embed',))
  c.schedule.update({'name': 'cosine', 'warmup_epochs': 40., 'warmup_start_factor': 1e-4, 'min_lr': 0.})
  c.data = mocov3_data(224, (0.08, 1.0), blur_kernel=23)

  if arg == 'vit_s':
    c.backbone.name = 'vit_small'
    c.backbone.kwargs.num_heads = 12  # mmpretrain's 'mocov3-small': 384 wide, 12 layers, 12 heads
  elif arg == 'resnet50':
    c.batch_size = 4096
    c.epochs = 100
    c.backbone.name = 'resnet50'
    c.backbone.kwargs = {'zero_init_residual': False}
    c.model.update({'temperature': 1.0, 'neck_num_layers': 2, 'pred_with_last_bn': False})
    c.optimizer = common.lars(lr=9.6, weight_decay=1e-6)
    c.schedule.update({'warmup_epochs': 10.})
    c.data = mocov3_data(224, (0.2, 1.0), blur_kernel=23)
  elif arg == 'demo':
    size = 16  # the 8x8 digits upsampled 2x: 4-px patches see 2x2 original pixels, 16 tokens
    c.data = mocov3_data(size, (0.3, 1.0), blur_kernel=3, digits=True)
    common.demo_run(c, size)
    c.dtype = 'float32'
    c.backbone.name = 'vit_tiny'
    c.backbone.kwargs.update({'img_size': size, 'patch_size': 4, 'embed_dim': 96, 'depth': 4, 'num_heads': 3})
    c.model.update({'neck_hid_channels': 512, 'neck_out_channels': 128, 'pred_hid_channels': 512})
    c.batch_size = 128
    c.epochs = 40
    c.optimizer.lr = 1.5e-3
    c.schedule.warmup_epochs = 4.
  return c
