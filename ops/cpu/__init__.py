"""CPU kernels (Numba).  Their on-disk cache is stamped with every kernel file's source first
(:mod:`.jitstamp`): kernels inline one another across files."""

from .jitstamp import install as _install_jit_stamp

_install_jit_stamp()
