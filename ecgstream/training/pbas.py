"""Registers the PBAS-style image method as ``ecgstream train --model pbas`` (see :mod:`ecgstream.training.image`)."""

from ecgstream.training.image import register_image_kind

__all__: list[str] = []

register_image_kind("pbas")
