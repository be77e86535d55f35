"""MAE, ViT-B/16, the reference recipe `mae_vit-base-p16_8xb512-coslr-400e_in1k`.

Paper: He et al. 2021, *Masked Autoencoders Are Scalable Vision Learners*
Demo: python -m jssl.main --config=configs/mae.py:demo --workdir=workdirs/mae_demo
Demo result: kNN top-1 85.5% (random init 69.9%), mean-pooled tokens, digits test split
Demo runtime: 26 min on 2 CPU cores shared with three other jobs (2026-11-23); an earlier run on the idle machine
took 5 min 53 s (85.0% / 69.6%, 2026-11-22)

Batch 4096 (8 x 512), AdamW lr 1.5e-4 x 4096/256 = 2.4e-3, betas (0.9, 0.95), weight decay 0.05 (none on norms,
biases, pos_embed, cls/mask tokens), 40 warmup epochs from 1e-4 x lr then cosine, 400 epochs; mask ratio 0.75;
decoder 8 blocks x 512 wide, 16 heads; normalized-pixel loss; one 224 crop (scale 0.2-1.0, bicubic) + flip.

Variants: `configs/mae.py` (ImageNet, ViT-B/16), `:vit_l`, `:vit_h` (ViT-L/16, ViT-H/14 encoders),
`:demo` (embedded digits, a small ViT, CPU minutes).

`:vit_l` and `:vit_h` follow mmpretrain's `mae_vit-large-p16_8xb512-amp-coslr-400e_in1k` and
`mae_vit-huge-p14_8xb512-amp-coslr-1600e_in1k` (same batch, optimizer and schedule as ViT-B, mixed precision, ViT-H
for 1600 epochs) with bf16 compute, parameters and AdamW state sharded over every device (`mesh.fsdp=-1`, any device
count) and rematerialized blocks; ViT-H's decoder attends 4 of its 16 heads at a time. Both fit the recipe's 512
images per 16 GiB chip (12.8 and 12.9 GiB on XLA:CPU's figures, docs/scale_out.md).
"""
from configs import common
from jssl.config import base_config

VARIANTS = ('demo', 'vit_h', 'vit_l')


def get_config(arg=None):
  arg = common.parse_arg(arg, __file__, VARIANTS)
  c = base_config('mae', 'vit_base', batch_size=4096, epochs=400)
  c.backbone.kwargs.update({'patch_size': 16, 'img_size': 224, 'pos_embed': 'sincos'})
  c.model.update({'mask_ratio': 0.75, 'norm_pix': True, 'decoder_embed_dim': 512, 'decoder_depth': 8,
                  'decoder_num_heads': 16})
  c.model.decoder_attention_head_chunks = 1  # decoder heads attended at a time: 16 / this (memory, same values)
  c.model.feature = 'cls'           # features for kNN / extraction: 'cls' token or 'mean' of patch tokens
  c.optimizer = common.adamw(lr=1.5e-4 * 4096 / 256, betas=(0.9, 0.95), weight_decay=0.05,
                             no_decay_names=('pos_embed', 'cls_token', 'mask_token'))
  c.schedule.update({'name': 'cosine', 'warmup_epochs': 40., 'warmup_start_factor': 1e-4, 'min_lr': 0.})
  c.data = common.imagenet_data(common.views(224, (0.2, 1.0), interpolation='bicubic'), augment=[])
  c.eval.interpolation = 'bicubic'

  if arg in ('vit_l', 'vit_h'):
    c.dtype = 'bfloat16'  # the recipes' "amp"
    c.remat = True
    c.param_sharding = 'fsdp'
    c.mesh.update({'data': 1, 'fsdp': -1})
  if arg == 'vit_l':
    c.backbone.name = 'vit_large'
  elif arg == 'vit_h':
    c.backbone.name = 'vit_huge'
    c.backbone.kwargs.patch_size = 14
    c.epochs = 1600
    c.model.decoder_attention_head_chunks = 4  # its decoder's 257 tokens: float32 attention arrays of 4.2 MB per image
  elif arg == 'demo':
    size = 32
    common.digits_demo(c, common.views(size, (0.5, 1.0), flip_prob=0., interpolation='bicubic'), augment=[])
    c.eval.interpolation = 'bicubic'
    c.backbone.name = 'vit_tiny'
    c.backbone.kwargs.update({'patch_size': 4, 'img_size': size, 'depth': 6})
    c.model.update({'decoder_embed_dim': 128, 'decoder_depth': 2, 'decoder_num_heads': 4, 'feature': 'mean'})
    c.epochs = 40
    c.optimizer.lr = 1.5e-4 * 128 / 256 * 4
    c.schedule.warmup_epochs = 4.
  return c
