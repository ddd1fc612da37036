"""A seeded, replayable simulation of the three services (VOPR's idea: TigerBeetle's simulator).

The real relationship, wallet and settlement handlers run on the real Redis Functions, in a
database of their own; the simulator is their network and their clock. It publishes inputs,
delivers messages in any order and any batches, injects faults between steps (a crash after the
Redis steps before the outputs are published, redelivery, a rebalance mid-draw, two instances at
once, a decision overtaken by another message) and checks every invariant against its own books
after every step. A failure names its seed and the shortest operation list found that still
breaks the same invariant.
"""

from gongji.simulation.model import Breach
from gongji.simulation.run import Failure, Outcome, execute, run_scenario, shrink, simulate
from gongji.simulation.scenarios import SCENARIOS
from gongji.simulation.world import Op

__all__ = ["SCENARIOS", "Breach", "Failure", "Op", "Outcome", "execute", "run_scenario", "shrink", "simulate"]
