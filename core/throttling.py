"""DRF's user and anonymous throttles, same rates and answers, with the window kept
in Redis in one atomic round trip when the cache is Redis (core.cache); with any
other cache (the embedded default's local memory) they are DRF's own.

An anonymous client is told apart by its address, client_address: the socket's peer,
or what the trusted proxies in front say (TRUSTED_PROXY_COUNT), never what the client
says itself. DRF's own get_ident takes the whole X-Forwarded-For when NUM_PROXIES is
unset, so a client sending a new header per request had a new window each time; with
NUM_PROXIES set it takes the leftmost entry when the header is short, which the
client wrote. (REST_FRAMEWORK's NUM_PROXIES is set to the same count, for any stock
DRF throttle.)"""

from django.conf import settings
from django.http import HttpRequest
from rest_framework import throttling


def client_address(request: HttpRequest) -> str | None:
    """The address a request came from. TRUSTED_PROXY_COUNT 0: the socket's peer
    (REMOTE_ADDR), X-Forwarded-For ignored. n: the n-th entry from the right of
    X-Forwarded-For, the address the outermost of the n trusted proxies saw (each
    proxy appends the peer it saw, so entries to its left are the client's own
    words); REMOTE_ADDR when the header has fewer entries (the request did not come
    through them all)."""
    remote_addr = request.META.get("REMOTE_ADDR")
    count = settings.TRUSTED_PROXY_COUNT
    if count <= 0:
        return remote_addr
    entries = [entry.strip() for entry in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    entries = [entry for entry in entries if entry]
    if len(entries) < count:
        return remote_addr
    return entries[-count]


class ClientAddressMixin:
    def get_ident(self, request) -> str | None:  # noqa: ANN001
        return client_address(request)


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


class UserRateThrottle(ClientAddressMixin, RedisWindowMixin, throttling.UserRateThrottle):
    def get_cache_key(self, request, view) -> str | None:  # noqa: ANN001
        """Per user; through an organization's key, per member (each is a person with
        their own rate, not a share of the organization's account's)."""
        membership_id = getattr(getattr(request, "auth", None), "membership_id", None)
        if membership_id is None or not request.user.is_authenticated:
            return super().get_cache_key(request, view)
        return self.cache_format % {"scope": self.scope, "ident": f"{request.user.pk}:m{membership_id}"}


class AnonRateThrottle(ClientAddressMixin, RedisWindowMixin, throttling.AnonRateThrottle):
    pass
