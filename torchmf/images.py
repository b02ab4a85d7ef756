"""Compatibility name: the image-stack reader lives in :mod:`torchmf.data.images` (also
``torchmf.data.read_images``); this module keeps ``from torchmf.images import read_images`` working."""
from .data.images import IMAGE_KEYS, ImageMetadata, MissingPackageError, read_image_metadata, read_images

__all__ = ["read_images", "read_image_metadata", "ImageMetadata", "MissingPackageError", "IMAGE_KEYS"]
