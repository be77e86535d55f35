"""MAE, ViT-B/16, the reference recipe `mae_vit-base-p16_8xb512-coslr-400e_in1k`:
batch 4096 (8 x 512), AdamW lr 1.5e-4 x 4096/256 = 2.4e-3, betas (0.9, 0.95), weight decay 0.05 (none on norms,
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
from jssl.config import base_config, demo_run, digits_data, imagenet_data


def get_config(arg=None):
  c = base_config()
  c.method = 'mae'
  c.batch_size = 4096
  c.epochs = 400
  c.backbone.name = 'vit_base'
  c.backbone.kwargs.patch_size = 16
  c.backbone.kwargs.img_size = 224
  c.backbone.kwargs.pos_embed = 'sincos'
  c.model.mask_ratio = 0.75
  c.model.norm_pix = True
  c.model.decoder_embed_dim = 512
  c.model.decoder_depth = 8
  c.model.decoder_num_heads = 16
  c.model.decoder_attention_head_chunks = 1  # decoder heads attended at a time: 16 / this (memory, same values)
  c.model.feature = 'cls'           # features for kNN / extraction: 'cls' token or 'mean' of patch tokens
  c.optimizer.name = 'adamw'
  c.optimizer.lr = 1.5e-4 * 4096 / 256
  c.optimizer.betas = (0.9, 0.95)
  c.optimizer.weight_decay = 0.05
  c.optimizer.no_decay_names = ('pos_embed', 'cls_token', 'mask_token')
  c.optimizer.grad_clip_norm = 0.
  c.optimizer.grad_accum_steps = 1
  c.schedule.update({'name': 'cosine', 'warmup_epochs': 40., 'warmup_start_factor': 1e-4, 'min_lr': 0.})
  c.data = imagenet_data(views=[dict(size=224, scale=(0.2, 1.0), interpolation='bicubic', flip_prob=0.5)],
                         augment=[])
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
    c.data = digits_data(views=[dict(size=size, scale=(0.5, 1.0), interpolation='bicubic', flip_prob=0.0)],
                         augment=[], image_size=size)
    demo_run(c, size)
    c.eval.interpolation = 'bicubic'
    c.backbone.name = 'vit_tiny'
    c.backbone.kwargs.update({'patch_size': 4, 'img_size': size, 'depth': 6})
    c.model.update({'decoder_embed_dim': 128, 'decoder_depth': 2, 'decoder_num_heads': 4, 'feature': 'mean'})
    c.batch_size = 128
    c.epochs = 40
    c.optimizer.lr = 1.5e-4 * 128 / 256 * 4
    c.schedule.warmup_epochs = 4.
  elif arg:
    raise ValueError(f"configs/mae.py: unknown variant '{arg}'; valid: demo, vit_h, vit_l")
  return c
