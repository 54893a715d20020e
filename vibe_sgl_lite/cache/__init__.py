"""Prefix caching: reuse the KV pages of prompt prefixes that earlier requests already computed.

``RadixCache`` shares prefixes through a radix tree over token ids; ``NoPrefixCache`` shares
nothing (``enable_prefix_cache=False``). Both satisfy ``PrefixCache``, the only interface the
engine uses.
"""

from vibe_sgl_lite.cache.base import NoPrefixCache, PrefixCache, PrefixMatch, RadixNode
from vibe_sgl_lite.cache.radix_cache import RadixCache

__all__ = ["NoPrefixCache", "PrefixCache", "PrefixMatch", "RadixCache", "RadixNode"]
