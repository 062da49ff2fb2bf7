"""Shared test helpers (import as `from helpers import ...`): tiny backbones, method contexts,
toy long-tailed datasets. One place, so the per-topic test files do not each re-define them."""
from __future__ import annotations

# --- loader datasets --------------------------------------------------------------------------

# --- methods ----------------------------------------------------------------------------------
