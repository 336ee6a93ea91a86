"""Quiet one known-harmless library warning before diffusers is imported.

transformers 5 warns on import that CLIPImageProcessor falls back to its PIL version
when torchvision is absent; SD pipelines here never use an image processor.
"""
from __future__ import annotations

import logging

from transformers.utils import logging as hf_logging


class _DropTorchvisionFallback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


hf_logging.get_logger("transformers.utils.import_utils").addFilter(_DropTorchvisionFallback())
