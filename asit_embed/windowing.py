"""Window arithmetic: which stretches of a clip (in feature frames or samples) are embedded on their own.

:meth:`asit_embed.SpeakerEncoder.windows` picks between the two layouts; ``embed_segments`` uses :func:`spans`.
"""

from __future__ import annotations


def spans(total: int, size: int, step: int) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges of ``size`` every ``step`` over ``total`` (``size <= total``), the last one
    moved back to end with ``total`` so every item is covered; one range when ``size == total``.

    >>> spans(10, 4, 3)
    [(0, 4), (3, 7), (6, 10)]
    """
    starts = list(range(0, total - size + 1, step))
    if starts[-1] + size < total:
        starts.append(total - size)
    return [(s, s + size) for s in starts]


def even_spans(total: int, longest: int) -> list[tuple[int, int]]:
    """The fewest ``(start, stop)`` ranges of at most ``longest`` that cover ``total``, all of one size, spread
    evenly from the start to the end (neighbours overlap by at most one item, so nothing is counted twice
    beyond that, and equal sizes batch without padding).

    >>> even_spans(298, 200)
    [(0, 149), (149, 298)]
    >>> even_spans(998, 200)
    [(0, 200), (200, 400), (399, 599), (598, 798), (798, 998)]
    """
    n = -(-total // longest)
    size = -(-total // n)
    if n == 1:
        return [(0, total)]
    return [(s, s + size) for s in (round(i * (total - size) / (n - 1)) for i in range(n))]
