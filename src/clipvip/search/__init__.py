"""Search your own videos: build an index (``index``), query it (``engine``, ``service``), serve it (``serve``).

Light on purpose: import the submodules you need (``clipvip.search.index`` etc.), so the CLI stays fast.
"""

from __future__ import annotations

__all__ = ["index", "engine", "service", "serve", "thumbs"]
