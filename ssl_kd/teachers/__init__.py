"""Teachers: official self-supervised checkpoints turned into frozen timm backbones.

`load_teacher(path, arch=None)` detects the checkpoint's layout (`formats.py`: one registered
detector + converter per layout), loads it strictly into `timm.create_model(arch, num_classes=0)`
and returns a frozen `Teacher`. `save_teacher` writes the project's own teacher file.
"""

from .formats import detect_format
from .load import Teacher, load_teacher, save_teacher

__all__ = ["Teacher", "detect_format", "load_teacher", "save_teacher"]
