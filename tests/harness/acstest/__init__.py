# SPDX-License-Identifier: MIT
"""acstest: the harness that runs real parts (Dovecot, PKI, D-Bus, FUSE) for acs tests."""

from . import paths, procs  # noqa: F401

__all__ = ['paths', 'pki', 'dovecot', 'corpus', 'dbus', 'fusecheck', 'imapcheck', 'mutf7']
