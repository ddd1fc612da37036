"""The audit a harness runs in a child reports the child's own peak memory, not its parent's: a
spawned child's `ru_maxrss` keeps the parent's peak."""

from __future__ import annotations

import multiprocessing
import resource
from concurrent.futures import ProcessPoolExecutor

from gongji.perf.results import peak_resident_mib


def test_a_spawned_childs_peak_is_its_own_not_its_parents() -> None:
    ballast = b"\x01" * (400 * 2**20)  # written, so resident: the parent's peak is 400 MiB at least
    del ballast
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 >= 400
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
        assert 0 < child.submit(peak_resident_mib).result() < 300
