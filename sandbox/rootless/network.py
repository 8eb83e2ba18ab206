"""The container's network namespace: for now, bringing up its loopback interface.

A new network namespace starts with `lo` down. One SIOCSIFFLAGS ioctl brings it up: no `ip`
subprocess and no netlink library (pyroute2 costs ~300 ms to import) on the start path.
"""

from __future__ import annotations

import fcntl
import socket
import struct

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, then ifr_flags in the union


def interface_up(name: str = "lo") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = _IFREQ.pack(name.encode(), 0)
        _, flags = _IFREQ.unpack(fcntl.ioctl(sock, SIOCGIFFLAGS, request))
        fcntl.ioctl(sock, SIOCSIFFLAGS, _IFREQ.pack(name.encode(), flags | IFF_UP))
