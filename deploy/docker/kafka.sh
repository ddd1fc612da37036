#!/bin/bash
# The broker in its container, configured as `gongji infra up` configures its own: the properties
# gongji/ops/docker.py wrote from the launcher's declaration (gongji/ops/infra.py:
# kafka_properties), the storage formatted once with every principal's SCRAM credentials (the
# broker authenticates from its first start), and the broker's own login on a file only it reads.
set -euo pipefail
umask 077
config=/gongji/docker/server.properties
export LOG_DIR=/gongji/docker/kafka/logs  # the image's own log directory is not this user's
mkdir -p "$LOG_DIR"
if [ ! -f /gongji/docker/kafka/data/meta.properties ]; then
  users=()
  for file in /gongji/secrets/*.password; do
    users+=(--add-scram "SCRAM-SHA-512=[name=$(basename "$file" .password),password=$(cat "$file"),iterations=8192]")
  done
  /opt/kafka/bin/kafka-storage.sh format --standalone --cluster-id="$(/opt/kafka/bin/kafka-storage.sh random-uuid)" \
    -c "$config" "${users[@]}"
fi
login=$(mktemp)
cat "$config" > "$login"
printf '%s\n' "listener.name.client.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"broker\" password=\"$(cat /gongji/secrets/broker.password)\";" >> "$login"
export KAFKA_HEAP_OPTS="-Xms256m -Xmx1g" KAFKA_OPTS="-XX:+PerfDisableSharedMem"
exec /opt/kafka/bin/kafka-server-start.sh "$login"
