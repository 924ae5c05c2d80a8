"""A vectorized 6G mobile-metaverse network simulator: the physical side the twin mirrors and steers.

Python API (each module's docstring has runnable examples):

* :class:`Scenario` / :func:`load_scenario` (:mod:`.scenarios`): every knob, validated; presets
  ``dense-urban-xr``, ``highway-vehicles``, ``stadium-event`` in ``connectors/simulator/presets/``.
* :class:`World` (:mod:`.world`): ``World(scenario, seed)``; ``step()`` returns the vectorized
  state; ``telemetry_records()``, ``demand_records()``, ``cell_reports()``, ``outcome_records()``
  return contract-valid dicts; ``apply_decision(decision)`` obeys a Decision;
  ``execute_demand(demand, placement)`` runs a demand and returns its Outcome.
* :class:`SimulatorLoop` (:mod:`.kafka_loop`): ``SimulatorLoop(world, sink, source, topics,
  realtime=...)``, ``run(seconds)`` -> :class:`SimSummary`, ``stop()``; :func:`run_simulator` builds
  the Kafka sink/source from the environment and runs it (what ``tiertwin sim`` calls);
  :func:`no_control` runs the same scenario and seed offline with nobody deciding (the baseline).
* Physics in :mod:`.radio` (TR 38.901), :mod:`.mobility`, :mod:`.layout`, :mod:`.demands`.

>>> world = World(load_scenario("dense-urban-xr").with_overrides(ues=5), seed=3)
>>> summary = SimulatorLoop(world).run(seconds=0.5)
>>> summary.steps, summary.ues
(50, 5)
"""

from tiertwin.connectors.simulator.kafka_loop import (MemorySink, SimSummary, SimulatorLoop, SimulatorTopics,
                                                     no_control, run_simulator)
from tiertwin.connectors.simulator.scenarios import Scenario, load_scenario, parse_scenario, preset_names
from tiertwin.connectors.simulator.world import StepState, World

__all__ = ["MemorySink", "Scenario", "SimSummary", "SimulatorLoop", "SimulatorTopics", "StepState", "World",
           "load_scenario", "no_control", "parse_scenario", "preset_names", "run_simulator"]
