"""Shared sending infrastructure: how many accounts send from one network address, and to whom.

Distributed campaigns run many accounts from a few proxy or data-centre addresses. When their text is
unavailable (end-to-end encrypted), the address is what ties the accounts together. This reuses the
account kernels with the address as the "account" and the *sender* as the "recipient", so an
address's distinct recipients in 1 h are the distinct accounts that sent from it, and its contact
counts are those of the messages sent from it. Carrier-grade NAT addresses are shared by many
legitimate users too; they message their contacts, which is why the policy asks for mostly
non-contact traffic from the address before it counts as coordination.

Addresses are identified by a hash only; they never appear in signals, logs or metrics.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from detector.events import EventBatch, EventType
from kernels import accounts as account_kernels


class NetworkFeatures(NamedTuple):
    """Per event: activity of the sender's network address in the last hour (zeros when unknown)."""

    network_senders_1h: np.ndarray  # float32, distinct accounts sending from the address
    network_msgs_1h: np.ndarray  # uint32
    network_contact_known_1h: np.ndarray  # uint32
    network_non_contact_1h: np.ndarray  # uint32


class NetworkActivity:
    """Fixed-capacity windows per network address (one table per detector instance)."""

    def __init__(self, capacity: int = 200_000, *, lateness_s: int = 30) -> None:
        # Addresses are few and some are very busy (carrier NAT: thousands of senders an hour):
        # a larger sketch pool than the kernel's default for accounts.
        self.state = account_kernels.new_account_state(
            capacity,
            lateness_s=lateness_s,
            ttl_s=2 * 3600,
            sketch_capacity=max(1, capacity // 16_384),
        )

    def observe(self, batch: EventBatch) -> NetworkFeatures:
        """Count the batch's messages per address; features for every event of the batch."""
        n = len(batch)
        senders = np.zeros(n, dtype=np.float32)
        msgs = np.zeros(n, dtype=np.uint32)
        known = np.zeros(n, dtype=np.uint32)
        non_contact = np.zeros(n, dtype=np.uint32)
        rows = np.flatnonzero((batch.network != 0) & (batch.type == EventType.MESSAGE))
        if rows.size:
            features = account_kernels.update_accounts(
                self.state,
                batch.ts_ms[rows],
                batch.network[rows],
                batch.account[rows],  # the sender plays the recipient: distinct senders
                batch.type[rows],
                batch.flags[rows],
                np.zeros(rows.size, dtype=np.int32),
                np.full(rows.size, -1, dtype=np.int64),
            )
            senders[rows] = features.recipients_1h
            msgs[rows] = features.msgs_1h
            known[rows] = features.contact_known_1h
            non_contact[rows] = features.non_contact_1h
        return NetworkFeatures(senders, msgs, known, non_contact)

    def stats(self) -> dict:
        return account_kernels.account_state_stats(self.state)
