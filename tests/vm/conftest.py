"""tests/vm/inside runs only inside the VM (tests/vm/inside.sh sets SANDBOX_VM_GUEST=1); on
the host, tests/vm/test_cgroups_vm.py boots the VM and reports those tests' results."""

from __future__ import annotations

import os

collect_ignore = [] if os.environ.get("SANDBOX_VM_GUEST") == "1" else ["inside"]
