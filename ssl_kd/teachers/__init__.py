"""Teachers: official self-supervised checkpoints turned into frozen timm backbones.

`load_teacher(path_or_name, arch=None, format="auto", *, trust=False, image_size=None)` reads the
file safely, detects its layout (`formats.py`: one registered detector + converter per layout, in
`layouts/`), loads it strictly into `timm.create_model(arch, num_classes=0)` (keeping the head of a
supervised timm/torchvision classifier, for logits) and returns a frozen `Teacher`; `timm:NAME.TAG`
names take timm's pretrained weights. `save_teacher` writes the project's own teacher file.
A file's SSL projection head (MoCo's `encoder_q.fc`, a Lightning `projector`, SwAV's `projection_head`,
DINO's head MLP, SimCLR's projectors) is kept beside the backbone (`heads.py`);
`Teacher.with_embedding("head")` (config `teacher.embedding`) makes it the teacher's `emb`.
`python -m ssl_kd.teachers inspect FILE` shows what a file holds and whether it loads.
"""

from .formats import detect_format
from .load import Teacher, load_teacher, save_teacher
from .teacher import LoadInfo

__all__ = ["LoadInfo", "Teacher", "detect_format", "load_teacher", "save_teacher"]
