"""Image garbage collection, decided as the kubelet's image manager decides it (pure).

Every ``ImageGCPeriod`` (5 minutes) a kubelet lists the runtime's images and containers and
keeps a record per image: when it first saw it, and when it last saw a container use it. Then:

1. with ``imageMaximumGCAge`` set (and the kubelet up for longer than it), every unused image
   last used longer ago than that is removed, whatever the disk usage;
2. the image filesystem is measured; at or above ``imageGCHighThresholdPercent`` (85) usage,
   unused images are removed, least recently used first, until the bytes freed bring usage
   down to ``imageGCLowThresholdPercent`` (80). An image first seen less than
   ``imageMinimumGCAge`` (2 minutes) ago is kept: it may have just been pulled for a container.

Images in use by a container and images the runtime pins (containerd pins the sandbox image)
are never removed. The IO, through CRI's ``ListImages``, ``ListContainers``, ``ImageFsInfo``
and ``RemoveImage``, is the kubelet's (:meth:`.kubelet.Kubelet.collect_images`);
:class:`ImageFilesystem` is what the kubelets that share one runtime share.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

#: the kubelet's ImageGCPeriod, which it does not let anyone configure
IMAGE_GC_PERIOD = 300.0


class ImageGcFailed(RuntimeError):
    """An image garbage collection could not run: the runtime names no image filesystem, or
    one without a size."""


@dataclass(frozen=True)
class ImageGcPolicy:
    """The KubeletConfiguration fields of image garbage collection, with their defaults."""

    #: ``imageGCHighThresholdPercent``: usage at or above which images are removed
    high_threshold_percent: int = 85
    #: ``imageGCLowThresholdPercent``: usage the removals aim to come down to
    low_threshold_percent: int = 80
    #: ``imageMinimumGCAge`` in seconds: an image seen for less is not removed
    minimum_age: float = 120.0
    #: ``imageMaximumGCAge`` in seconds: an unused image is removed this long after its last
    #: use (0: never)
    maximum_age: float = 0.0

    def __post_init__(self) -> None:
        for name in ("high_threshold_percent", "low_threshold_percent"):
            value = getattr(self, name)
            if not 0 <= value <= 100:
                raise ValueError(f"image GC {name} {value} is not in the range [0-100]")
        if self.low_threshold_percent > self.high_threshold_percent:
            raise ValueError(
                f"image GC low threshold ({self.low_threshold_percent} %) can not be higher "
                f"than its high threshold ({self.high_threshold_percent} %)"
            )
        if self.minimum_age < 0 or self.maximum_age < 0:
            raise ValueError("image GC ages must not be negative")
        if self.maximum_age and self.maximum_age <= self.minimum_age:
            raise ValueError(
                f"image GC maximum age ({self.maximum_age} s) must be greater than its "
                f"minimum age ({self.minimum_age} s)"
            )

    @property
    def disabled(self) -> bool:
        """As on a kubelet: a high threshold of 100 % and no maximum age turn image GC off."""
        return self.high_threshold_percent == 100 and not self.maximum_age


@dataclass(frozen=True)
class RuntimeImage:
    """An image as the runtime lists it (CRI ``Image``)."""

    id: str
    size: int
    pinned: bool = False
    #: its tags and digests, which containers may name it by
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageRecord:
    """What the kubelet remembers of an image."""

    image: RuntimeImage
    first_detected: float
    #: when a container was last seen using it (0: never)
    last_used: float = 0.0


@dataclass(frozen=True)
class FsUsage:
    """The image filesystem's size and free bytes (what an unprivileged writer may use)."""

    capacity: int
    available: int

    @classmethod
    def of(cls, st: os.statvfs_result) -> FsUsage:
        return cls(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)

    @property
    def percent(self) -> int:
        """Used percent, rounded as the kubelet rounds it (down, on the available side)."""
        return 100 - int(min(self.available, self.capacity) * 100 / self.capacity)


def is_used(image: RuntimeImage, in_use: AbstractSet[str]) -> bool:
    """Whether a container uses the image: by its ID (the container's image ref), or by a
    name the container was created from."""
    return image.id in in_use or not in_use.isdisjoint(image.names)


def detect_images(
    records: Mapping[str, ImageRecord],
    images: Iterable[RuntimeImage],
    in_use: AbstractSet[str],
    now: float,
) -> dict[str, ImageRecord]:
    """The records after a look at the runtime: a new image is first detected now, one in use
    was last used now, and images that are gone are forgotten."""
    out: dict[str, ImageRecord] = {}
    for image in images:
        old = records.get(image.id)
        first = old.first_detected if old else now
        last = now if is_used(image, in_use) else (old.last_used if old else 0.0)
        out[image.id] = ImageRecord(image, first, last)
    return out


def eviction_order(
    records: Mapping[str, ImageRecord], in_use: AbstractSet[str]
) -> list[ImageRecord]:
    """The images GC may remove, least recently used first (then the longest known first):
    neither in use nor pinned."""
    candidates = [
        r for r in records.values() if not r.image.pinned and not is_used(r.image, in_use)
    ]
    return sorted(candidates, key=lambda r: (r.last_used, r.first_detected, r.image.id))


def too_old(
    candidates: Iterable[ImageRecord], policy: ImageGcPolicy, now: float, started: float
) -> list[ImageRecord]:
    """The candidates unused for longer than the maximum age; none until the kubelet itself
    has run that long (it cannot know what was used before it started)."""
    if not policy.maximum_age or now - started <= policy.maximum_age:
        return []
    return [r for r in candidates if now - r.last_used > policy.maximum_age]


def space_to_free(usage: FsUsage, policy: ImageGcPolicy) -> int:
    """Bytes to free to bring usage down to the low threshold; 0 while usage is below the high
    threshold."""
    if usage.capacity <= 0:
        raise ImageGcFailed("invalid capacity 0 on image filesystem")
    if usage.percent < policy.high_threshold_percent:
        return 0
    available = min(usage.available, usage.capacity)
    return max(usage.capacity * (100 - policy.low_threshold_percent) // 100 - available, 0)


def images_to_free(
    candidates: Iterable[ImageRecord], to_free: int, policy: ImageGcPolicy, now: float
) -> list[ImageRecord]:
    """The candidates to remove, in order, until their sizes add up to ``to_free``; images
    younger than the minimum age are passed over."""
    chosen: list[ImageRecord] = []
    freed = 0
    for record in candidates:
        if freed >= to_free:
            break
        if now - record.first_detected < policy.minimum_age:
            continue
        chosen.append(record)
        freed += record.image.size
    return chosen


@dataclass
class ImageGcResult:
    """One collection: the usage it found, the bytes it had to free, what it removed (image
    IDs, and their bytes as the runtime sizes them), and why it failed ("" when it did not)."""

    usage_percent: int = 0
    to_free: int = 0
    freed: int = 0
    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failure: str = ""


@dataclass
class ImageFilesystem:
    """What the kubelets that share one runtime, and so one image filesystem, share for image
    GC: one collection at a time (a second one measures what the first left), and the images
    containers are being created from, which no collection removes."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    starting: Counter[str] = field(default_factory=Counter)

    @contextlib.contextmanager
    def holding(self, *names: str) -> Iterator[Callable[[str], None]]:
        """Count ``names`` as in use until the block ends; the block may hold more names (the
        image's ID once its pull has resolved it) through the function it is given."""
        held: list[str] = []

        def hold(name: str) -> None:
            if name:
                self.starting[name] += 1
                held.append(name)

        for name in names:
            hold(name)
        try:
            yield hold
        finally:
            for name in held:
                self.starting[name] -= 1
                if self.starting[name] <= 0:
                    del self.starting[name]


__all__ = [
    "IMAGE_GC_PERIOD",
    "FsUsage",
    "ImageFilesystem",
    "ImageGcFailed",
    "ImageGcPolicy",
    "ImageGcResult",
    "ImageRecord",
    "RuntimeImage",
    "detect_images",
    "eviction_order",
    "images_to_free",
    "is_used",
    "space_to_free",
    "too_old",
]
