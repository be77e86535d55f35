"""DenseCL, ResNet-50, the reference recipe `densecl_resnet50_8xb32-coslr-200e_in1k`.

Paper: Wang et al. 2021, *Dense Contrastive Learning for Self-Supervised Visual Pre-Training*
Demo: python -m jssl.main --config=configs/densecl.py:demo --workdir=workdirs/densecl_demo
Demo result: kNN top-1 94.99% (random init 94.71%), 48 px, digits test split
Demo runtime: 46.5 min on 2 CPU cores shared with other jobs (load average ~20; 2026-11-22)

Batch 256 (8 GPUs x 32), SGD lr 0.03 / momentum 0.9 / weight decay 1e-4 (on every parameter, as torch SGD), cosine
over 200 epochs (no warmup); DenseCLNeck 2048-2048-128 (global fc-ReLU-fc, dense 1x1 conv-ReLU-1x1 conv on the 7x7
map, no grid pooling), InfoNCE at temperature 0.2 against two queues of 65,536 keys (global keys; means of the dense
keys), key encoder momentum 0.999, shuffle-BN over 8 groups (the reference's 8 GPUs), loss = 0.5 * global + 0.5 *
dense with the dense weight 0 for the first 1,000 iterations (DenseCLHook, start_iters=1000); ResNet-50 without
zero-init residuals. MoCo v2's views: two 224 crops (scale 0.2-1) with color jitter (0.4, 0.4, 0.4, 0.1) p=0.8,
grayscale p=0.2, Gaussian blur sigma 0.1-2.0 p=0.5, horizontal flip.

Note: mmpretrain 1.2's config of this recipe lists no DenseCLHook (so its loss weight is 0.5 from the first step);
the authors' code and MMSelfSup 0.x use the 1,000-iteration warmup, which is the default here
(`--config.model.loss_lambda_warmup=0` gives mmpretrain 1.2's behaviour).

Variants: `configs/densecl.py` (ImageNet), `configs/densecl.py:demo` (embedded digits, ResNet-18, CPU minutes).
"""
from configs import common
from jssl.config import base_config

VARIANTS = ('demo',)


def get_config(arg=None):
  arg = common.parse_arg(arg, __file__, VARIANTS)
  c = base_config('densecl', 'resnet50', batch_size=256, epochs=200)
  c.model.update({'neck_hid_channels': 2048, 'neck_out_channels': 128})
  c.model.num_grid = 0                # 0: the dense branch runs on the full last feature map (7x7 at 224)
  c.model.update({'temperature': 0.2, 'queue_len': 65536, 'momentum': 0.999, 'loss_lambda': 0.5})
  c.model.loss_lambda_warmup = 1000   # steps with loss_lambda = 0 (DenseCLHook's start_iters)
  c.model.shuffle_bn_groups = 8
  c.optimizer = common.sgd(lr=0.03, weight_decay=1e-4)
  c.schedule.update({'name': 'cosine', 'warmup_epochs': 0., 'min_lr': 0.})
  c.data = common.imagenet_data(common.views(224, (0.2, 1.0), num=2), common.mocov2_augment(blur_kernel=23))

  if arg == 'demo':
    # 48 px: ResNet-18's last stage is then a 2x2 map (at 32 px it is 1x1 and the dense loss would be the global
    # one), at about half the cost of 64 px
    size = 48
    common.resnet_demo(c, common.views(size, (0.3, 1.0), num=2, flip_prob=0.), common.mocov2_augment(blur_kernel=5),
                       size=size)
    c.model.neck_hid_channels = 256
    c.model.queue_len = 256           # a multiple of the batch, well below the 1,437 training images
    c.model.momentum = 0.99           # a few hundred steps: the key encoder must follow within the run
    c.model.update({'loss_lambda_warmup': 30, 'shuffle_bn_groups': 4})
    c.epochs = 20
    c.optimizer.lr = 0.05             # at 0.3 the loss stays at log(K + 1): collapse
  return c
