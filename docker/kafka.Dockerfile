# Apache Kafka (KRaft) from the same Maven jars as the managed broker (`tiertwin broker install`),
# laid out in docker/context/kafka-libs by `bash docker/build-images`. One node per container;
# docker/kafka-node configures it from the environment (KAFKA_NODE_ID, KAFKA_VOTERS, KAFKA_CLUSTER_ID).
ARG BASE=eclipse-temurin:17-jre
FROM ${BASE}
COPY docker/context/kafka-libs /opt/kafka/libs
COPY docker/kafka-node /usr/local/bin/kafka-node
COPY docker/log4j2.xml /opt/kafka/log4j2.xml
RUN chmod 0755 /usr/local/bin/kafka-node && mkdir -p /var/lib/kafka
EXPOSE 9092 9093
ENTRYPOINT ["kafka-node"]
