"""Image -> SigLIP pixel values, as VILA 355fda9 does with ``image_aspect_ratio=resize``.

RGB, resized to the tower's size (384 x 384 for VILA-M3) with no crop and no padding (PIL bicubic, the default of
``Image.resize`` that VILA calls), rescaled to 0..1 and normalised with the checkpoint's own mean and std
(``vision_tower/preprocessor_config.json``; SigLIP's are 0.5 / 0.5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SiglipPreprocessor", "PREPROCESSOR_CONFIG"]

PREPROCESSOR_CONFIG = "preprocessor_config.json"


@dataclass(frozen=True)
class SiglipPreprocessor:
    height: int = 384
    width: int = 384
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255
    resample: int = 3  # PIL.Image.BICUBIC

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"image size must be positive, got {self.height}x{self.width}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or any(s == 0 for s in self.image_std):
            raise ValueError(f"image_mean and image_std need 3 values and a non-zero std, got {self.image_mean}, {self.image_std}")

    @classmethod
    def from_directory(cls, directory: Path) -> SiglipPreprocessor:
        path = Path(directory) / PREPROCESSOR_CONFIG
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: vision_tower/ must hold the SigLIP preprocessor config")
        config = json.loads(path.read_text())
        size = config.get("size") or {}
        return cls(
            height=int(size.get("height", 384)),
            width=int(size.get("width", 384)),
            image_mean=tuple(float(v) for v in config.get("image_mean", (0.5, 0.5, 0.5))),
            image_std=tuple(float(v) for v in config.get("image_std", (0.5, 0.5, 0.5))),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)),
            resample=int(config.get("resample", 3)),
        )

    def to_config(self) -> dict:
        return {
            "image_processor_type": "SiglipImageProcessor",
            "do_resize": True,
            "size": {"height": self.height, "width": self.width},
            "resample": self.resample,
            "do_rescale": True,
            "rescale_factor": self.rescale_factor,
            "do_normalize": True,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }

    def save(self, directory: Path) -> None:
        (Path(directory) / PREPROCESSOR_CONFIG).write_text(json.dumps(self.to_config(), indent=2) + "\n")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) or (H, W) uint8 -> (3, height, width) float32, normalised."""
        from PIL import Image

        array = np.asarray(image)
        if array.dtype != np.uint8:
            raise TypeError(f"images must be uint8 (0..255), got {array.dtype}; window or rescale them first")
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] not in (3, 4):
            raise ValueError(f"images must be (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) grey, got shape {array.shape}")
        picture = Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
        if picture.size != (self.width, self.height):
            picture = picture.resize((self.width, self.height), resample=self.resample)
        pixels = np.asarray(picture, dtype=np.float32) * np.float32(self.rescale_factor)
        pixels = (pixels - np.asarray(self.image_mean, dtype=np.float32)) / np.asarray(self.image_std, dtype=np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))
