"""What every benchmark result records about the machine beside its numbers."""

import json

from tiertwin.jobs.bench import python_loop_cpu_ms, write_results


def test_results_carry_the_hosts_speed_beside_the_numbers(tmp_path):
    path = write_results("probe", {"records_per_s": 1.0}, tmp_path)
    doc = json.loads(path.read_text())
    assert doc["results"] == {"records_per_s": 1.0}
    speed = doc["machine"]["python_loop_cpu_ms_at_end"]
    assert isinstance(speed, float) and 0 < speed < 1000


def test_the_loop_probe_is_a_median_of_cpu_time_not_wall_time(monkeypatch):
    import time

    ticks = iter([0.0, 0.002, 1.0, 1.004, 2.0, 2.003])  # three runs: 2, 4 and 3 ms of thread CPU
    monkeypatch.setattr(time, "thread_time", lambda: next(ticks))
    assert python_loop_cpu_ms(3) == 3.0
