"""CAE, ViT-B/16, the reference recipe `cae_beit-base-p16_8xb256-amp-coslr-300e_in1k`:
batch 2048 (8 x 256), AdamW lr 1.5e-3, betas (0.9, 0.999), weight decay 0.05 (none on 1-D params: biases, norms,
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

from jssl.config import base_config, demo_run, digits_data, imagenet_data


def get_config(arg=None):
  c = base_config()
  c.method = 'cae'
  c.batch_size = 2048
  c.epochs = 300
  c.backbone.name = 'vit_base'
  c.backbone.kwargs.update({'patch_size': 16, 'img_size': 224, 'pos_embed': 'sincos', 'qkv_bias': 'qv',
                            'layer_scale_init': 0.1})
  c.model.tokenizer_path = ''      # the DALL-E encoder's weights: .npz (python -m jssl.convert.dalle) or .pth
  c.model.random_tokenizer = ml_collections.ConfigDict({'n_hid': 256, 'n_blk_per_group': 2, 'vocab_size': 8192})
  c.model.num_masking_patches = 75
  c.model.min_num_patches = 16
  c.model.max_num_patches = 0      # 0: no limit (the reference's None)
  c.model.min_aspect = 0.3
  c.model.regressor_depth = 4
  c.model.decoder_depth = 4
  c.model.neck_num_heads = 12
  c.model.neck_mlp_ratio = 4.0
  c.model.neck_layer_scale_init = 0.1
  c.model.lambd = 2.0
  c.model.base_momentum = 0.0      # teacher <- m * teacher + (1 - m) * encoder, every iteration
  c.model.feature = 'cls'          # features for kNN / extraction: 'cls' token or 'mean' of patch tokens
  c.optimizer.name = 'adamw'
  c.optimizer.lr = 1.5e-3
  c.optimizer.betas = (0.9, 0.999)
  c.optimizer.weight_decay = 0.05
  c.optimizer.no_decay_names = ()
  c.optimizer.grad_clip_norm = 3.0
  c.optimizer.grad_accum_steps = 1
  c.schedule.update({'name': 'cosine', 'warmup_epochs': 10., 'warmup_start_factor': 1e-4, 'min_lr': 1e-5})
  c.data = imagenet_data(views=[dict(size=224, second_size=112, second_interpolation='lanczos', scale=(0.08, 1.0),
                                     interpolation='bicubic', flip_prob=0.5)], augment=[])
  c.eval.interpolation = 'bicubic'

  if arg == 'demo':
    size = 32
    c.data = digits_data(views=[dict(size=size, second_size=64, second_interpolation='lanczos', scale=(0.5, 1.0),
                                     interpolation='bicubic', flip_prob=0.0)], augment=[], image_size=size)
    demo_run(c, size)
    c.eval.interpolation = 'bicubic'
    c.backbone.name = 'vit_tiny'
    c.backbone.kwargs.update({'patch_size': 4, 'img_size': size, 'depth': 4})
    c.model.tokenizer_path = 'random'  # no real DALL-E weights in a demo: a fixed-seed random tokenizer
    c.model.random_tokenizer.update({'n_hid': 8, 'n_blk_per_group': 1, 'vocab_size': 512})
    # 8 x 8 patches: 24 masked (~the recipe's 75 / 196), blocks of at least 4
    c.model.update({'num_masking_patches': 24, 'min_num_patches': 4, 'regressor_depth': 2, 'decoder_depth': 2,
                    'neck_num_heads': 3, 'feature': 'mean'})
    c.batch_size = 128
    c.epochs = 20  # the encoder sees 62% of the patches (MAE's 25%): fewer, shallower steps than MAE's demo
    c.optimizer.lr = 1.5e-3 * 128 / 2048 * 4
    c.schedule.warmup_epochs = 2.
  elif arg:
    raise ValueError(f"configs/cae.py: unknown variant '{arg}'; valid: demo")
  return c
