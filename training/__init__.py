"""Data and training for the bundled demo model.

- :mod:`training.procedural`: procedural landscape paintings (scene sampler, five
  painting styles, scribbles, region maps, captions, attribute labels).
- :mod:`training.make_dataset`: writes an ``imagefolder`` dataset of such paintings.
- :mod:`training.train`: trains (or fine-tunes) a small Stable Diffusion format model
  on any folder of captioned images and saves a diffusers folder.
- :mod:`training.bench`: measures model size, training and sampling speed of a preset.
"""

from core import _compat  # noqa: F401,E402  (quiets a harmless transformers import warning)
