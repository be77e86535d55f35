"""MaskFeat, ViT-B/16, the reference recipe `maskfeat_vit-base-p16_8xb256-amp-coslr-300e_in1k`.

Paper: Wei et al. 2022, *Masked Feature Prediction for Self-Supervised Visual Pre-Training*
Demo: python -m jssl.main --config=configs/maskfeat.py:demo --workdir=workdirs/maskfeat_demo
Demo result: kNN top-1 57.38% (random init 60.17%), linear probe 84.68% (84.68%), mean-pooled tokens, digits test split: below random init on kNN since the ViT init modes landed (2026-12-03)
Demo runtime: 609 s, the whole command on 2 CPU cores shared with three other jobs (2026-12-03)

Batch 2048 (8 x 256), AdamW lr 2e-4 x 8 = 1.6e-3, betas (0.9, 0.999), weight decay 0.05 (none on biases, norms
and the mask token: the config's paramwise `bias/norm/flat_decay_mult=0` + `mask_token` key; pos_embed and the
cls token keys are commented out there, so those 3-D tensors do decay), gradient clipping at global norm 0.02;
linear warmup from lr x 1e-6 over 30 epochs, then cosine to an absolute 1e-6 at epoch 300 (CosineAnnealingLR
eta_min). MaskFeatViT-B/16 (learned positions, mask token), LinearNeck 768 -> 108 on every token, HOG targets (9
bins, 8-px cells, Gaussian window 16: 2 x 2 cells x 3 channels x 9 bins per 16-px patch) of the normalized input,
MSE over the masked patches. Masks: BEiTMaskGenerator(input_size=14, num_masking_patches=78, min_num_patches=15),
which is MMSelfSup's MaskFeatMaskGenerator at its defaults (window 14, ratio 0.4: int(0.4 x 196) = 78, min 15,
aspect 0.3 - 1/0.3). One 224 crop (scale 0.5-1.0, bicubic) + flip. The reference trains with AMP (fp16 + dynamic
loss scaling); here `dtype='bfloat16'` computes in bfloat16 with float32 params (HOG and the loss in float32).

Variants: `configs/maskfeat.py` (ImageNet, ViT-B/16), `:demo` (embedded digits, a small ViT, CPU minutes).
"""
from configs import common
from jssl.config import base_config

VARIANTS = ('demo',)


def get_config(arg=None):
  arg = common.parse_arg(arg, __file__, VARIANTS)
  c = base_config('maskfeat', 'vit_base', batch_size=2048, epochs=300)
  c.dtype = 'bfloat16'
  c.backbone.kwargs.update({'img_size': 224, 'patch_size': 16, 'pos_embed': 'learned'})
  c.model.num_masking_patches = 78  # of the 14 x 14 patches
  c.model.update({'min_num_patches': 15, 'hog_nbins': 9})
  c.model.hog_pool = 8              # cell side in pixels
  c.model.hog_window = 16           # Gaussian window side (std = window / 2), tiled over the image
  c.model.feature = 'cls'           # features for kNN / extraction: 'cls' token or 'mean' of patch tokens
  # + biases and norms (1-D)
  c.optimizer = common.adamw(lr=2e-4 * 8, betas=(0.9, 0.999), weight_decay=0.05, no_decay_names=('mask_token',),
                             grad_clip_norm=0.02)
  c.schedule.update({'name': 'cosine', 'warmup_epochs': 30., 'warmup_start_factor': 1e-6, 'min_lr': 1e-6})
  c.data = common.imagenet_data(common.views(224, (0.5, 1.0), interpolation='bicubic'), augment=[])
  c.eval.interpolation = 'bicubic'

  if arg == 'demo':
    size = 32
    c.dtype = 'float32'
    common.digits_demo(c, common.views(size, (0.5, 1.0), flip_prob=0., interpolation='bicubic'), augment=[])
    c.eval.interpolation = 'bicubic'
    c.backbone.name = 'vit_tiny'
    c.backbone.kwargs.update({'patch_size': 8, 'img_size': size, 'embed_dim': 192, 'depth': 6, 'num_heads': 3})
    # 4 x 4 patches of 8 px: 2 x 2 cells of 4 px each (108 targets per patch, the reference's layout at half
    # scale), Gaussian window 16; 6 of the 16 patches masked (int(0.4 x 16)) in blocks of at least 2. 4-px patches
    # with 2-px cells (a 128-wide 4-block ViT, 4x the tokens) did not beat random init in 20 epochs (48.8% vs 54.9%)
    c.model.update({'num_masking_patches': 6, 'min_num_patches': 2, 'hog_pool': 4, 'hog_window': 16,
                    'feature': 'mean'})
    c.epochs = 20
    c.optimizer.lr = 1e-3
    c.schedule.warmup_epochs = 2.
  return c
