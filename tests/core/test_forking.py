"""`PerProcess`: what the master made is never used by a forked worker, which makes its
own on first use; a `make` that fails is tried again."""

from __future__ import annotations

import itertools
import os

import pytest

from bridge.core.forking import PerProcess


def test_a_forked_child_makes_its_own_value_and_the_parent_keeps_its_own() -> None:
    made = itertools.count()
    holder = PerProcess(lambda: (os.getpid(), next(made)))
    parent = holder.get()
    assert holder.get() is parent  # made once per process
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it got, then leave without pytest's clean-up
        try:
            child = holder.get()
            os.write(write, f"{child[0]} {child[1]} {holder.get() is child}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_pid, child_count, stable = pipe.read().split()
    os.waitpid(pid, 0)
    assert (int(child_pid), int(child_count), stable) == (pid, 1, "True")
    assert holder.get() is parent


def test_a_make_that_fails_is_tried_again() -> None:
    attempts = itertools.count(1)

    def make() -> int:
        attempt = next(attempts)
        if attempt == 1:
            raise OSError("the run directory is gone")
        return attempt

    holder = PerProcess(make)
    with pytest.raises(OSError):
        holder.get()
    assert holder.get() == 2 and holder.get() == 2
