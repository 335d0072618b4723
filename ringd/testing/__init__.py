"""What the tests and the benchmarks share: a private etcd, real ``ringd start``
daemons, waiting with a deadline, and the process trees they leave.

Only the standard library, trio and ringd itself (etcd3 when a client is asked
for): benchmarks import it as well as tests, without pytest. Processes are found
through ``ringd.procfs`` and killed by pid, never by name.
"""

from __future__ import annotations

from .daemon import Daemon as Daemon
from .daemon import DaemonExited as DaemonExited
from .etcd import etcd3_client as etcd3_client
from .etcd import etcd_for_tests as etcd_for_tests
from .etcd import private_etcd as private_etcd
from .processes import alive as alive
from .processes import descendants as descendants
from .processes import hard_stop as hard_stop
from .processes import helpers_of as helpers_of
from .processes import kill_pids as kill_pids
from .processes import marked_pids as marked_pids
from .processes import processes_with_env as processes_with_env
from .processes import wait_gone as wait_gone
from .waiting import WaitTimeout as WaitTimeout
from .waiting import wait_until as wait_until
from .waiting import wait_until_async as wait_until_async
