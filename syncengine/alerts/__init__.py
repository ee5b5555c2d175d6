"""Alerts: tell the people who run the sync, once, when something needs them, and again
when it is fixed (issue 17).

- ``decide``: the pure part: which conditions a pipeline's attempt opens, grows, reminds
  or clears, and the messages a person reads;
- ``channels``: the incoming webhook (JSON) and e-mail (smtplib), one attempt each;
- ``sender``: the edge: the facts from the state store, the claims that make several
  daemons send each alert once, delivery with retries on a thread of its own.
"""

from syncengine.alerts.decide import EVENTS, Alert, RunFacts, compose, decide, observe
from syncengine.alerts.sender import Alerter, Delivery, ending_of, send_test

__all__ = [
    "EVENTS",
    "Alert",
    "Alerter",
    "Delivery",
    "RunFacts",
    "compose",
    "decide",
    "ending_of",
    "observe",
    "send_test",
]
