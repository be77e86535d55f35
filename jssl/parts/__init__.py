"""Method parts: the pieces several self-supervised methods share, pure and jit-able, each in method_state.

- `ema`: momentum (EMA) targets, `EmaTarget` (BYOL, MoCo v1/v2/v3, DenseCL, InterCLR, CAE);
- `queue`: FIFO queues of keys with their pointer (MoCo v1/v2, DenseCL, InterCLR);
- `memory`: memory banks of one feature per image, with cluster labels and centroids (NPID, ODC, InterCLR);
- `clustering`: PCA whitening and the one k-means (squared Euclidean or dot product, over the mesh or inside a
  step), uniform sampling over clusters (DeepCluster, ODC, InterCLR);
- `sinkhorn`: Sinkhorn-Knopp equipartition of scores (SwAV).

A top-level package rather than jssl/methods/parts/: the method registry keeps its rule (every module in
jssl/methods/ but base.py is a method), and evaluators, the loop and tools import parts without going through the
methods. Parts import only jax, numpy and jssl.losses; nothing here imports jssl.methods or jssl.train.
"""
