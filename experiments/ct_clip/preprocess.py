"""One CT-RATE volume → the model's input: HU, resampled, clipped, scaled, cropped or padded.

Axes: nibabel gives (x, y, z); the model reads (slices, rows, columns) = (z, y, x).
"""

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

HU_RANGE = (-1000.0, 1000.0)
PAD_VALUE = -1.0


def resample(volume_zyx: np.ndarray, spacing_zyx: Sequence[float], target_zyx: Sequence[float]) -> np.ndarray:
    """Trilinear resampling to `target_zyx` mm (torch's interpolate, as upstream); new size = round(size ·
    spacing / target)."""
    size = [max(1, round(n * s / t)) for n, s, t in zip(volume_zyx.shape, spacing_zyx, target_zyx, strict=True)]
    if list(volume_zyx.shape) == size:
        return volume_zyx
    tensor = torch.from_numpy(np.ascontiguousarray(volume_zyx, dtype=np.float32))[None, None]
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
               shape_zyx: Sequence[int]) -> np.ndarray:
    """HU volume (x, y, z) → float16 (z, y, x) in [-1, 1] of `shape_zyx`, at `target_spacing_xyz`."""
    volume = np.transpose(hu_xyz, (2, 1, 0))
    volume = resample(volume, spacing_xyz[::-1], target_spacing_xyz[::-1])
    volume = np.clip(volume, *HU_RANGE) / HU_RANGE[1]
    return crop_or_pad(volume.astype(np.float32), shape_zyx).astype(np.float16)
