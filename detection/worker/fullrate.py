"""Which live cameras a worker samples faster than scoring needs, for pictures and clips.

A camera scored at 1 frame/s with a keyframe a second has only its keyframes decoded
(decoding less, issue 16). The live picture of a watched analysis page and a recording
incident clip take 4 frames a second, which needs every frame decoded, converted, and for
a clip encoded: at 768x576 and 25 fps ~26 ms a second of decoding instead of ~6.5, and ~6 %
of a core in all per camera. An incident on many cameras at once (the lights going out)
then asked more of a 2-core worker than it had: with 32 ViT-B-32 cameras recording, it
scored 11-12 frames a second instead of 25-28 (docs/performance.md, "Full-rate cameras").

So at most DETECTION_FULL_RATE_CAMERAS cameras at once get the faster rate; the others'
pictures and clips take the frames sampled for scoring. Scoring comes first.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

# Why a camera wants the faster rate, in the order free places are given: a clip is the
# evidence of an incident, a live picture is a view.
RECORDING = 0
WATCHED = 1


def choose(wanted: Mapping[int, int], holding: Collection[int], limit: int) -> set[int]:
    """The cameras (analysis ids) sampled at the faster rate.

    `wanted` maps each camera that wants it to why (RECORDING or WATCHED); `holding` are
    those that have it now. A camera keeps its place while it still wants it (a clip does
    not change rate halfway because another incident opened); free places go to recording
    cameras before watched ones, the older analysis first.
    """
    limit = max(0, limit)
    by_priority = sorted(wanted, key=lambda pk: (wanted[pk], pk))
    kept = [pk for pk in by_priority if pk in holding][:limit]
    free = [pk for pk in by_priority if pk not in kept]
    return set(kept + free[: limit - len(kept)])
