"""roost on several machines: each `ActorSystem` on a PostgreSQL store is a node of a cluster.

Nodes lease the runs they drive (`roost_leases`, renewed by each node's heartbeat), every
write of a run is fenced by its lease, and a node with free run slots takes over runs
whose lease expired and resumes them from their last checkpoint (see `node`). A step in
a pool the node does not serve goes to a node that does through the step-task queue
(see `tasks`). Systems
on the embedded LMDB store are not nodes: nothing here runs for them.
"""

from roost.cluster.node import Cluster, LeaseInfo, NodeInfo
from roost.cluster.settings import NodeSettings, node_settings

__all__ = ["Cluster", "LeaseInfo", "NodeInfo", "NodeSettings", "node_settings"]
