"""CAE, ViT-B/16, the reference recipe `cae_beit-base-p16_8xb256-amp-coslr-300e_in1k`.

Paper: Chen et al. 2022, *Context Autoencoder for Self-Supervised Representation Learning*
Demo: python -m jssl.main --config=configs/cae.py:demo --workdir=workdirs/cae_demo
Demo result: kNN top-1 65.18% (random init 69.36%), linear probe 94.43% (94.99%), mean-pooled tokens, a random tokenizer, digits test split: below random init since the ViT init modes landed (2026-12-03)
Demo runtime: 1323 s, the whole command on 2 CPU cores shared with three other jobs (2026-12-03)

Batch 2048 (8 x 256), AdamW lr 1.5e-3, betas (0.9, 0.999), weight decay 0.05 (none on 1-D params: biases, norms,
layer scales; the cls and mask tokens decay, as the reference's flat_decay_mult=0), gradient clipping at norm 3.0,
10 warmup epochs from 1e-4 x lr then cosine to 1e-5, 300 epochs. Encoder: ViT-B/16 with q/v biases, layer scale
0.1, fixed sin-cos positions; regressor 4 and decoder 4 blocks (768 wide, 12 heads, layer scale 0.1); lambd 2;
teacher momentum 0 (a copy of the encoder of the previous iteration). BEiT block mask: 75 of the 14 x 14 patches,
blocks of at least 16. Data: RandomResizedCrop 224 (scale 0.08-1, bicubic) + flip; the same crop resized to 112 px
(PIL lanczos) for the DALL-E tokenizer.

The tokenizer's weights are a local file the user supplies (no download at run time):
  wget https://download.openmmlab.com/mmselfsup/1.x/target_generator_ckpt/dalle_encoder.pth
  python -m jssl.convert.dalle dalle_encoder.pth dalle_encoder.npz
  python -m jssl.main --config=configs/cae.py --config.model.tokenizer_path=dalle_encoder.npz --workdir=...
`tokenizer_path='random'` is a fixed-seed random tokenizer (`model.random_tokenizer`), for demos and tests only.

Variants: `configs/cae.py` (ImageNet, ViT-B/16), `:demo` (embedded digits, a small ViT, a small random tokenizer,
CPU minutes).
"""
import ml_collections

from configs import common
from jssl.config import base_config

VARIANTS = ('demo',)


def get_config(arg=None):
  arg = common.parse_arg(arg, __file__, VARIANTS)
  c = base_config('cae', 'vit_base', batch_size=2048, epochs=300)
  c.backbone.kwargs.update({'patch_size': 16, 'img_size': 224, 'pos_embed': 'sincos', 'qkv_bias': 'qv',
                            'layer_scale_init': 0.1})
  c.model.tokenizer_path = ''      # the DALL-E encoder's weights: .npz (python -m jssl.convert.dalle) or .pth
  c.model.random_tokenizer = ml_collections.ConfigDict({'n_hid': 256, 'n_blk_per_group': 2, 'vocab_size': 8192})
  # BEiT's block mask: 75 of the 14 x 14 patches, blocks of 16 or more (0: no upper limit, the reference's None)
  c.model.update({'num_masking_patches': 75, 'min_num_patches': 16, 'max_num_patches': 0, 'min_aspect': 0.3})
  c.model.update({'regressor_depth': 4, 'decoder_depth': 4, 'neck_num_heads': 12, 'neck_mlp_ratio': 4.0,
                  'neck_layer_scale_init': 0.1, 'lambd': 2.0})
  c.model.base_momentum = 0.0      # teacher <- m * teacher + (1 - m) * encoder, every iteration
  c.model.feature = 'cls'          # features for kNN / extraction: 'cls' token or 'mean' of patch tokens
  # no decay on 1-D params only: the cls and mask tokens decay, as the reference's flat_decay_mult=0
  c.optimizer = common.adamw(lr=1.5e-3, betas=(0.9, 0.999), weight_decay=0.05, no_decay_names=(),
                             grad_clip_norm=3.0)
  c.schedule.update({'name': 'cosine', 'warmup_epochs': 10., 'warmup_start_factor': 1e-4, 'min_lr': 1e-5})
  c.data = common.imagenet_data(common.views(224, interpolation='bicubic', second_size=112,
                                             second_interpolation='lanczos'), augment=[])
  c.eval.interpolation = 'bicubic'

  if arg == 'demo':
    size = 32
    common.digits_demo(c, common.views(size, (0.5, 1.0), flip_prob=0., interpolation='bicubic', second_size=64,
                                       second_interpolation='lanczos'), augment=[], size=size)
    c.eval.interpolation = 'bicubic'
    c.backbone.name = 'vit_tiny'
    c.backbone.kwargs.update({'patch_size': 4, 'img_size': size, 'depth': 4})
    c.model.tokenizer_path = 'random'  # no real DALL-E weights in a demo: a fixed-seed random tokenizer
    c.model.random_tokenizer.update({'n_hid': 8, 'n_blk_per_group': 1, 'vocab_size': 512})
    # 8 x 8 patches: 24 masked (~the recipe's 75 / 196), blocks of at least 4
    c.model.update({'num_masking_patches': 24, 'min_num_patches': 4, 'regressor_depth': 2, 'decoder_depth': 2,
                    'neck_num_heads': 3, 'feature': 'mean'})
    c.epochs = 20  # the encoder sees 62% of the patches (MAE's 25%): fewer, shallower steps than MAE's demo
    c.optimizer.lr = 1.5e-3 * 128 / 2048 * 4
    c.schedule.warmup_epochs = 2.
  return c
