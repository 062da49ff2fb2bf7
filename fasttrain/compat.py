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
