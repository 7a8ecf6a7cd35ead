"""The app's page icon, drawn here (no file, no request to any other host): a Kronecker
product ``A ⊗ B`` of two small patterns, the picture of what the app is about."""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["page_icon"]


def page_icon(size: int = 64) -> Image.Image:
    a = np.array([[1.0, 0.35, 0.1], [0.35, 0.8, 0.35], [0.1, 0.35, 1.0]])
    b = np.array([[1.0, 0.5, 0.2], [0.5, 1.0, 0.5], [0.2, 0.5, 1.0]])
    k = np.kron(a, b)  # 9 × 9
    cells = np.kron(k, np.ones((size // 9 + 1, size // 9 + 1)))[:size, :size]
    rgb = np.stack([40 + 30 * cells, 70 + 110 * cells, 140 + 115 * cells], axis=-1)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")
