"""Deprecated: Beam's Kafka read and write moved to :mod:`tiertwin.connectors.beam_kafka`, beside the other
Kafka connectors. This module re-exports its names for one release; import them from there."""

from tiertwin.connectors.beam_kafka import (DEAD_LETTERS, RECORDS, UNBOUNDED, KafkaOffsetTracker,  # noqa: F401
                                            PartitionOffsets, PartitionSlice, ReadFromKafka, ReadSpec, WriteToKafka,
                                            dead_letter_key, decode_record, discover_partitions, drain)
