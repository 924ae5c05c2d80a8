"""A consumer-group member that records every key it processes, then commits (at-least-once).

Run as ``python -m tests.workers.slow_consumer TOPIC GROUP OUT_FILE`` (cwd = repo root);
the test SIGKILLs it mid-way and starts it again in the same group.
"""

import os
import sys
import time

from tiertwin.connectors.kafka import KafkaSource


def main(topic: str, group: str, out_path: str) -> None:
    source = KafkaSource([topic], group, on_undecodable="raise", client_id="slow-consumer", max_poll_records=50)
    with open(out_path, "a") as out:
        while True:
            batch = source.poll(200)
            if not batch:
                continue
            for record in batch:
                out.write(record.key.decode() + "\n")
            out.flush()
            os.fsync(out.fileno())  # processed = durably recorded, before the offsets are committed
            time.sleep(0.05)
            source.commit()


if __name__ == "__main__":
    main(*sys.argv[1:4])
