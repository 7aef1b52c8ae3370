"""DRF's user and anonymous throttles, same rates and answers, with the window kept
in Redis in one atomic round trip when the cache is Redis (core.cache); with any
other cache (the embedded default's local memory) they are DRF's own."""

from rest_framework import throttling


class RedisWindowMixin:
    def _window_take(self):  # noqa: ANN202
        """The Redis cache's window_take (core.cache), or None for any other cache."""
        return getattr(self.cache, "window_take", None)

    def allow_request(self, request, view) -> bool:  # noqa: ANN001
        if (take := self._window_take()) is None:
            return super().allow_request(request, view)
        if self.rate is None or (key := self.get_cache_key(request, view)) is None:
            return True
        self.now = self.timer()
        self.oldest = take(f"{key}:window", now=self.now, seconds=self.duration, limit=self.num_requests)
        return self.oldest is None

    def wait(self) -> float | None:
        if self._window_take() is None:
            return super().wait()
        # The window is full: a place frees up when its oldest request falls out.
        return max(self.duration - (self.now - self.oldest), 0.0)


class UserRateThrottle(RedisWindowMixin, throttling.UserRateThrottle):
    pass


class AnonRateThrottle(RedisWindowMixin, throttling.AnonRateThrottle):
    pass
