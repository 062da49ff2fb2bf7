"""Workarounds for third-party notices, in one place and with no effect on import."""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec and warns on every call.
# decode_jpeg / encode_jpeg are the fast path measured for the torch backend and the synthetic
# corpus (and need no extra dependency), so this one notice is muted where we call them.
TVIO_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"


@contextlib.contextmanager
def quiet_tvio_deprecation() -> Iterator[None]:
    """Mute torchvision's codec deprecation notice inside the block (other warnings unchanged)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TVIO_DEPRECATION, category=DeprecationWarning)
        yield


# Known, harmless notices of the model exporters (`fasttrain export`), muted there and nowhere else:
# - the ONNX exporter's constant folding skips strided slices (the CIFAR ResNet's option-A shortcut,
#   x[:, :, ::2, ::2]): the graph is exported exactly, only that fold is not done (three copies);
# - torch.jit.trace's deprecation: TorchScript is the format asked for, on purpose.
EXPORT_NOTICES = ((UserWarning, r"Constant folding - Only steps=1 can be constant folded"),
                  (FutureWarning, r"`torch\.jit\.trace(_method)?` is deprecated"))


@contextlib.contextmanager
def quiet_export_notices() -> Iterator[None]:
    """Mute EXPORT_NOTICES inside the block; every other warning still shows."""
    with warnings.catch_warnings():
        for category, message in EXPORT_NOTICES:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield
