"""What a create may assume before its transaction has answered, to start booting at once.

A cold create spends ~8 ms in its transaction (the image lookup, the org row lock, the usage
sums) before it knows what to boot. The image a name resolves to rarely changes, so the
provisioner boots what the name resolved to last time while the transaction runs, and throws
that boot away if the transaction disagrees (another image, a quota refusal, any failure).

An org refused for quota is not guessed for for a while: a client that keeps asking past its
quota must not make the host boot and destroy a sandbox per request.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from ..store.tables import Image

__all__ = ["Guesses"]

REFUSAL_MEMORY_SECONDS = 30.0
MAX_IMAGES = 4096


class Guesses:
    def __init__(self, max_images: int = MAX_IMAGES) -> None:
        self._images: OrderedDict[tuple[str, str], Image] = OrderedDict()
        self._max = max_images
        self._refused: dict[str, float] = {}

    def image(self, org_id: str, reference: str) -> Image | None:
        """What ``reference`` resolved to for this org last time, unless the org was refused
        for quota lately (then: None, no guessing)."""
        refused = self._refused.get(org_id)
        if refused is not None:
            if time.monotonic() - refused < REFUSAL_MEMORY_SECONDS:
                return None
            del self._refused[org_id]
        key = (org_id, reference)
        image = self._images.get(key)
        if image is not None:
            self._images.move_to_end(key)
        return image

    def resolved(self, org_id: str, reference: str, image: Image) -> None:
        self._images[(org_id, reference)] = image
        self._images.move_to_end((org_id, reference))
        while len(self._images) > self._max:
            self._images.popitem(last=False)

    def refused(self, org_id: str) -> None:
        """The org's create was refused for quota: no guessing for it for a while."""
        self._refused[org_id] = time.monotonic()
