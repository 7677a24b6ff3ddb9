"""One CT-RATE volume → the model's input: HU, clipped, resampled, scaled, cropped or padded, as upstream
(CT-CLIP's scripts/data_inference_nii.py), so that its published weights see what they were trained on.

Axes: nibabel gives (x, y, z); the model reads (slices, rows, columns) = (z, x, y), upstream's order.
"""

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

HU_RANGE = (-1000.0, 1000.0)
PAD_VALUE = -1.0


def resample(volume: np.ndarray, spacing: Sequence[float], target: Sequence[float]) -> np.ndarray:
    """Trilinear resampling to `target` mm per axis (torch's interpolate, as upstream); new size =
    floor(size · spacing / target), as upstream's int()."""
    size = [max(1, int(n * s / t)) for n, s, t in zip(volume.shape, spacing, target, strict=True)]
    if list(volume.shape) == size:
        return volume
    tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=size, mode="trilinear", align_corners=False)[0, 0].numpy()


def crop_or_pad(volume: np.ndarray, shape: Sequence[int], pad_value: float = PAD_VALUE) -> np.ndarray:
    """Centre crop each axis longer than `shape`, centre pad each shorter one with `pad_value`
    (an odd difference puts the extra voxel at the end)."""
    out = np.full(shape, pad_value, dtype=volume.dtype)
    src, dst = [], []
    for have, want in zip(volume.shape, shape, strict=True):
        if have >= want:
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:
            start = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(start, start + have))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def preprocess(hu_xyz: np.ndarray, spacing_xyz: Sequence[float], target_spacing_xyz: Sequence[float],
               shape: Sequence[int]) -> np.ndarray:
    """HU volume (x, y, z) → float16 (z, x, y) in [-1, 1] of `shape`, at `target_spacing_xyz`; clipped
    before resampling, as upstream."""
    order = (2, 0, 1)
    volume = np.transpose(np.clip(hu_xyz, *HU_RANGE), order)
    volume = resample(volume, [spacing_xyz[i] for i in order], [target_spacing_xyz[i] for i in order])
    return crop_or_pad((volume / HU_RANGE[1]).astype(np.float32), shape).astype(np.float16)
