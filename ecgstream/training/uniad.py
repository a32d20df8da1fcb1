"""Registers the UniAD-style image method as ``ecgstream train --model uniad`` (see :mod:`ecgstream.training.image`)."""

from ecgstream.training.image import register_image_kind

__all__: list[str] = []

register_image_kind("uniad")
