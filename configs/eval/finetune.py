"""Fine-tuning a pretrained backbone end to end (jssl/evaluate/finetune.py). The backbone and its architecture come
from `--config.init.backbone=PATH` (a jssl workdir or an imported backbone); its kwargs are updated by
config.backbone.kwargs (drop path, pooling).

  python -m jssl.main --config=configs/eval/finetune.py --config.init.backbone=runs/mae --workdir=runs/mae_ft

Variants (mmpretrain `.mim/configs/<method>/benchmarks/...`, hyper-parameters in docs/layer_decay.md):
  (none)      MAE ViT-B/16, `mae/benchmarks/vit-base-p16_8xb128-coslr-100e_in1k`: AdamW lr 2e-3 at batch 1024,
              betas (0.9, 0.999), weight decay 0.05 (none on 1-D params, pos_embed, cls_token), layer decay 0.65,
              5 warmup epochs from 1e-4 x lr, cosine to 1e-6, 100 epochs, drop path 0.1, mean patch token + fc_norm,
              head N_trunc(0, 2e-5); RandomResizedCrop 224 bicubic + flip, RandAugment rand-m9-mstd0.5-inc1,
              random erasing 0.25, Mixup 0.8 / CutMix 1.0 (one per batch, p 1/2 each), label smoothing 0.1.
  :vit_l      MAE ViT-L/16 (`vit-large-p16_8xb128-coslr-50e_in1k`): lr 4e-3, layer decay 0.75, 50 epochs, drop path 0.2.
  :vit_h      MAE ViT-H/14 (`vit-huge-p14_8xb128-coslr-50e_in1k`): as ViT-L, drop path 0.3.
  :cae        CAE ViT-B (`cae/benchmarks/beit-base-p16_8xb128-coslr-100e_in1k`): lr 8e-3, layer decay 0.65,
              mean = std = 127.5 normalization.
  :maskfeat   MaskFeat ViT-B (`maskfeat/benchmarks/vit-base-p16_8xb256-coslr-100e_in1k`): lr 8e-3 at batch 2048,
              20 warmup epochs, cosine over 80, head std 0.02, color jitter 0.4 before RandAugment's ops.
  :simmim     SimMIM Swin-B at 224 px / window 7 (`simmim/benchmarks/swin-base-w7_8xb256-coslr-100e_in1k`; the
              pretrained window-6 relative position tables are resized on load as mmpretrain does): AdamW lr 5e-3 at
              batch 2048, layer decay 0.9 by Swin block, gradient clip 5, 20 warmup epochs from 2e-4 x lr, bf16,
              head std 0.02.
  :simmim_192 the same at the pretraining geometry, 192 px / window 6 (`swin-base-w6_8xb256-coslr-100e_in1k-192px`;
              eval resize 219 / crop 192).
  :semi_1pct  semi-supervised ResNet-50 on ImageNet 1% (SimCLR's 1percent.txt split, config.data.train_subset_file):
  :semi_10pct MMSelfSup's `resnet50_head1_4xb64-steplr1e-1-20e_in1k-{1,10}pct`: SGD lr 0.1, momentum 0.9, weight
              decay 5e-4, batch 256, 20 epochs, lr x 0.1 at 12 and 16, no mixup / RandAugment / smoothing.
  :demo       the MAE demo's ViT (workdirs/mae_demo) on the embedded digits: the MAE recipe at CPU scale.

The random-init figure: the same command with --config.init.random_init=True.
Demo: python -m jssl.main --config=configs/eval/finetune.py:demo --workdir=workdirs/mae_finetune
Demo result: top-1 74.09% (random init 27.58%) on the MAE demo's backbone, digits test split
Demo runtime: 210 s on 2 CPU cores (2026-11-23)
"""
import ml_collections

from configs import common
from jssl import optim
from jssl.config import base_config

VARIANTS = ('cae', 'demo', 'maskfeat', 'semi_10pct', 'semi_1pct', 'simmim', 'simmim_192', 'vit_h', 'vit_l')

RANDAUGMENT = 'rand-m9-mstd0.5-inc1'
ERASING = dict(type='RandomErasing', prob=0.25, min_area=0.02, max_area=1 / 3, mode='pixel')


def get_config(arg=None):
  arg = common.parse_arg(arg, __file__, VARIANTS)
  c = base_config()
  c.method = 'finetune'
  c.backbone.name = ''                 # '' -> the architecture of config.init.backbone
  c.backbone.kwargs.drop_path_rate = 0.1
  c.backbone.kwargs.use_fc_norm = True  # MAE's global pool: LayerNorm of the mean patch token
  c.backbone.kwargs.output = 'mean'
  c.init.backbone = ''
  c.init.strict = False                # fc_norm starts fresh; the pretrained final norm is unused
  c.batch_size = 1024
  c.epochs = 100
  c.model.num_classes = 1000
  c.model.feature = 'mean'
  c.model.head_init_std = 2e-5
  c.model.mixup_alpha = 0.8
  c.model.cutmix_alpha = 1.0
  c.model.mix_switch_prob = 0.5
  c.model.mix_prob = 1.0
  c.model.label_smoothing = 0.1
  c.model.ema_momentum = 0.            # > 0: also evaluate an EMA of the weights (e.g. 0.9999)
  c.optimizer.update({'name': 'adamw', 'lr': 2e-3, 'betas': (0.9, 0.999), 'weight_decay': 0.05,
                      'no_decay_names': optim.FINETUNE_NO_DECAY_NAMES, 'layer_decay': 0.65,
                      'layer_decay_kind': 'vit', 'grad_clip_norm': 0.})
  c.schedule.update({'name': 'cosine', 'warmup_epochs': 5., 'warmup_start_factor': 1e-4, 'min_lr': 1e-6})
  c.data = common.imagenet_data(common.views(224, interpolation='bicubic'), augment=[ERASING])
  c.data.randaugment = RANDAUGMENT
  c.data.train_subset_file = ''
  c.eval.interpolation = 'bicubic'
  # the evaluator reports its heads' val top-1 / top-5, not kNN
  c.evals = ml_collections.ConfigDict({'classifier': {'every': 0, 'every_epochs': 0, 'at_end': True}})
  c.checkpoint.every = 5000

  if arg in ('vit_l', 'vit_h'):
    c.optimizer.update({'lr': 4e-3, 'layer_decay': 0.75})
    c.epochs = 50
    c.backbone.kwargs.drop_path_rate = 0.2 if arg == 'vit_l' else 0.3
  elif arg == 'cae':
    c.optimizer.lr = 8e-3
    c.data.mean = (0.5, 0.5, 0.5)
    c.data.std = (0.5, 0.5, 0.5)
  elif arg == 'maskfeat':
    c.batch_size = 2048
    c.optimizer.lr = 8e-3
    c.schedule.warmup_epochs = 20.
    c.model.head_init_std = 0.02
    c.data.augment = [dict(type='ColorJitter', brightness=0.4, contrast=0.4, saturation=0.4, hue=0., prob=1.0),
                      ERASING]
  elif arg in ('simmim', 'simmim_192'):
    # Swin: pooled, normed last stage. 224 px / window 7 after 192 px / window 6 pretraining: the relative position
    # tables are resized on load (jssl.pretrained.resize_relative_position_bias_table)
    c.backbone.kwargs = ml_collections.ConfigDict({'drop_path_rate': 0.1, 'img_size': 224, 'window_size': 7})
    c.batch_size = 2048
    c.dtype = 'bfloat16'
    c.model.head_init_std = 0.02
    c.optimizer.update({'lr': 5e-3, 'layer_decay': 0.9, 'layer_decay_kind': 'swin', 'grad_clip_norm': 5.0})
    c.schedule.update({'warmup_epochs': 20., 'warmup_start_factor': 2.5e-7 / 1.25e-3, 'min_lr': 1e-6})
    if arg == 'simmim_192':
      c.backbone.kwargs.update({'img_size': 192, 'window_size': 6})
      c.data.views = common.views(192, interpolation='bicubic')
      c.eval.update({'resize': 219, 'crop': 192})
  elif arg in ('semi_1pct', 'semi_10pct'):
    c.backbone.kwargs = {}
    c.init.strict = True
    c.batch_size = 256
    c.epochs = 20
    c.model.update({'feature': 'cls', 'head_init_std': 0.01, 'mixup_alpha': 0., 'cutmix_alpha': 0.,
                    'label_smoothing': 0.})
    c.optimizer = ml_collections.ConfigDict({'name': 'sgd', 'lr': 0.1, 'momentum': 0.9, 'weight_decay': 5e-4})
    c.schedule.update({'name': 'step', 'milestones': (12, 16), 'gamma': 0.1, 'warmup_epochs': 0.})
    c.data.views = common.views(224)
    c.data.augment = []
    c.data.randaugment = ''
    c.data.train_subset_file = f'{arg[5:].replace("pct", "percent")}.txt'  # under config.data.root
    c.eval.interpolation = 'bilinear'
  elif arg == 'demo':
    common.digits_demo(c, common.views(32, (0.5, 1.0), flip_prob=0., interpolation='bicubic'), augment=[ERASING])
    c.data.randaugment = RANDAUGMENT
    c.data.train_subset_file = ''
    c.eval.interpolation = 'bicubic'
    c.init.backbone = 'workdirs/mae_demo'
    c.model.num_classes = 10
    c.epochs = 10
    c.optimizer.lr = 2e-3 * 128 / 1024 * 4
    c.schedule.warmup_epochs = 1.
  return c
