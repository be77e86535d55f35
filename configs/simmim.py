"""SimMIM, Swin-B, the reference recipe `simmim_swin-base-w6_8xb256-amp-coslr-100e_in1k-192px`.

Paper: Xie et al. 2021, *SimMIM: A Simple Framework for Masked Image Modeling*
Demo: python -m jssl.main --config=configs/simmim.py:demo --workdir=workdirs/simmim_demo
Demo result: kNN top-1 75.5% (random init 67.4%), pooled last stage of a tiny Swin, digits test split
Demo runtime: 123 s, the whole command on 2 idle CPU cores (2026-11-23)

Swin-B (embed 128, depths 2-2-18-2, heads 4-8-16-32) at 192 px with window 6 (stage maps 48, 24, 12, 6; the last
is one unshifted window), drop path 0.1, a mask token; decoder = 1x1 conv to 32^2 x 3 channels + pixel shuffle;
L1 loss on the masked pixels of the normalized image. Batch 2048 (8 x 256), AdamW lr 2e-4 x 2048/512 = 8e-4,
betas (0.9, 0.999), weight decay 0.05 except norms, biases, absolute_pos_embed and relative_position_bias_table (the
mask token and the decoder's kernel decay, as in the reference), gradients clipped to norm 5; linear warmup over 10
epochs from lr x 1e-6/2e-4, then cosine to 1e-5 x 2048/512 at epoch 100. Data: RandomResizedCrop 192 of area
0.67-1 (aspect 3/4-4/3, bilinear) + flip; masks of 32 x 32 blocks, ratio 0.6 (on device from the step's key).
The reference trains with AMP (fp16 + loss scaling); here `dtype='bfloat16'` with float32 params and loss.
The pretraining recipe has no layer-wise lr decay (MMSelfSup uses it only in its fine-tuning configs).

Variants: `configs/simmim.py` (ImageNet, Swin-B, 100 epochs), `:800e`
(`simmim_swin-base-w6_16xb128-amp-coslr-800e_in1k-192px`: the same batch 2048 as 16 x 128, lr 1e-4 x 2048/512,
warmup from lr x 5e-7/1e-4 over 10 epochs, then constant with a x0.1 step at epoch 700, 800 epochs), `:swin_l`
(`simmim_swin-large-w12_16xb128-amp-coslr-800e_in1k-192px`: Swin-L, window 12 with mmpretrain's pad_small_map, so
the 12 x 12 stage shifts and the 6 x 6 stage is padded to one 12 x 12 window; the 800e schedule), `:demo`
(embedded digits at 32 px, a 2-stage Swin with 4-px patches, CPU minutes).
"""
from configs import common
from jssl.config import base_config

VARIANTS = ('800e', 'demo', 'swin_l')


def get_config(arg=None):
  arg = common.parse_arg(arg, __file__, VARIANTS)
  c = base_config('simmim', 'swin_base', batch_size=2048, epochs=100)
  c.dtype = 'bfloat16'              # the reference's AMP
  c.backbone.kwargs.update({'img_size': 192, 'patch_size': 4, 'window_size': 6, 'drop_path_rate': 0.1})
  c.model.update({'mask_patch_size': 32, 'mask_ratio': 0.6})
  # norms and biases (the 1-d params) are excluded from decay as well
  c.optimizer = common.adamw(lr=2e-4 * 2048 / 512, betas=(0.9, 0.999), weight_decay=0.05, grad_clip_norm=5.0,
                             no_decay_names=('absolute_pos_embed', 'relative_position_bias_table'))
  c.schedule.update({'name': 'cosine', 'warmup_epochs': 10., 'warmup_start_factor': 1e-6 / 2e-4,
                     'min_lr': 1e-5 * 2048 / 512})
  c.data = common.imagenet_data(common.views(192, (0.67, 1.0)), augment=[])
  c.eval.update({'resize': 219, 'crop': 192})  # the encoder's 192 px (windows follow img_size)

  def schedule_800e():
    c.epochs = 800
    c.optimizer.lr = 1e-4 * 2048 / 512
    c.schedule.update({'name': 'step', 'warmup_epochs': 10., 'warmup_start_factor': 5e-7 / 1e-4,
                       'milestones': (700,), 'gamma': 0.1, 'min_lr': 0.})

  if arg == '800e':
    schedule_800e()
  elif arg == 'swin_l':
    schedule_800e()
    c.backbone.name = 'swin_large'
    c.backbone.kwargs.update({'window_size': 12, 'pad_small_map': True})
  elif arg == 'demo':
    size = 32
    common.digits_demo(c, common.views(size, (0.67, 1.0), flip_prob=0.), augment=[])
    c.dtype = 'float32'
    c.backbone.name = 'swin_tiny'
    # 4-px patches: 8 x 8 (4 shifted windows) -> 4 x 4 (one window) maps; the decoder's stride 8
    c.backbone.kwargs = {'img_size': size, 'patch_size': 4, 'embed_dim': 64, 'depths': (2, 2),
                         'num_heads': (2, 4), 'window_size': 4, 'drop_path_rate': 0.0, 'out_indices': (1,)}
    c.model.mask_patch_size = 8     # a 4 x 4 grid of blocks of 2 x 2 tokens, 10 of 16 masked
    c.epochs = 40
    c.optimizer.lr = 1e-3
    c.schedule.update({'warmup_epochs': 4., 'min_lr': 1e-5})
  return c
