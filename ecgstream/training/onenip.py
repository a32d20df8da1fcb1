"""Registers the OneNIP-style image method as ``ecgstream train --model onenip`` (see :mod:`ecgstream.training.image`)."""

from ecgstream.training.image import register_image_kind

__all__: list[str] = []

register_image_kind("onenip")
