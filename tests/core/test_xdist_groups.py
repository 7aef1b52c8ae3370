"""The Procfile's stacks (web, worker, beat) run one at a time on one xdist process:
bin/test's `--dist loadgroup` sends every `xdist_group("stack")` test to the same
worker. pytest-xdist does it by a suffix on the test's id, which some pytest
releases silently drop (xdist#1386: then two beats share one schedule file and the
timed takeovers miss); this fails when that happens again."""

import pytest

pytestmark = pytest.mark.xdist_group("stack")


def test_a_stack_test_is_in_the_stack_group_under_xdist(request):
    if not request.config.getoption("loadgroup", default=False):
        pytest.skip("not under xdist's --dist loadgroup")
    assert request.node.nodeid.endswith("@stack"), request.node.nodeid
