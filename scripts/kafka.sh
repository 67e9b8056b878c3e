#!/usr/bin/env bash
# A real Apache Kafka broker (KRaft, one node, 127.0.0.1) for the tests, the demo and the benchmarks.
# The broker's jars come from Maven Central through scripts/kafka/pom.xml: no other download.
#
#   scripts/kafka.sh install                  resolve the jars (idempotent; needs java and mvn)
#   scripts/kafka.sh start [DIR] [PORT]       format DIR if new, start the broker, wait until it serves
#   scripts/kafka.sh stop  [DIR]              SIGTERM, wait for a clean shutdown (SIGKILL after 30 s)
#   scripts/kafka.sh kill  [DIR]              SIGKILL (crash tests)
#   scripts/kafka.sh status [DIR]             exit 0 when running
#
# DIR defaults to $LABELAUDIT_KAFKA_DIR or ./.kafka; PORT to 9092 (the controller listens on PORT+1).
# A started DIR remembers its port, so `start DIR` after `stop DIR` brings the same broker back.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KAFKA_VERSION="3.9.1"   # keep in step with scripts/kafka/pom.xml
JARS="${LABELAUDIT_KAFKA_JARS:-${XDG_CACHE_HOME:-$HOME/.cache}/labelaudit/kafka-$KAFKA_VERSION}"
HEAP="${LABELAUDIT_KAFKA_HEAP:-512m}"

install_jars() {
  if [ -f "$JARS/.complete" ]; then return 0; fi
  for tool in java mvn; do
    command -v "$tool" >/dev/null || { echo "kafka: '$tool' is missing (bash scripts/setup.sh installs it)" >&2; exit 1; }
  done
  echo "kafka: resolving Apache Kafka $KAFKA_VERSION jars from Maven Central into $JARS"
  rm -rf "$JARS" && mkdir -p "$JARS"
  mvn -q -B -f "$ROOT/scripts/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$JARS" >&2
  touch "$JARS/.complete"
}

kafka_java() {  # kafka_java MAIN_CLASS ARGS... (exec: the pid of `kafka_java ... &` is java's own)
  exec java -Xmx"$HEAP" -Xms128m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$DIR/log4j.properties" -cp "$JARS/*" "$@"
}

pid_of() { [ -f "$DIR/broker.pid" ] && kill -0 "$(cat "$DIR/broker.pid")" 2>/dev/null && cat "$DIR/broker.pid"; }

write_config() {
  mkdir -p "$DIR/data"
  cat >"$DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$((PORT + 1))
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$((PORT + 1))
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DIR/data
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
message.max.bytes=10485760
EOF
  cat >"$DIR/log4j.properties" <<EOF
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$DIR/server.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
EOF
  echo "$PORT" >"$DIR/port"
}

start() {
  install_jars
  if pid="$(pid_of)"; then echo "kafka: already running (pid $pid) on 127.0.0.1:$(cat "$DIR/port")"; return 0; fi
  if [ ! -f "$DIR/port" ]; then write_config; fi
  PORT="$(cat "$DIR/port")"
  if [ ! -f "$DIR/data/meta.properties" ]; then
    (kafka_java kafka.tools.StorageTool format -t "$(kafka_java kafka.tools.StorageTool random-uuid)" \
      -c "$DIR/server.properties") >"$DIR/format.log" 2>&1 || { cat "$DIR/format.log" >&2; exit 1; }
  fi
  : >"$DIR/server.log"
  kafka_java kafka.Kafka "$DIR/server.properties" >"$DIR/stdout.log" 2>&1 </dev/null &
  echo $! >"$DIR/broker.pid"
  for _ in $(seq 1 240); do
    if grep -q "Kafka Server started" "$DIR/server.log" 2>/dev/null; then
      echo "kafka: broker $KAFKA_VERSION serving on 127.0.0.1:$PORT (data in $DIR)"
      return 0
    fi
    if ! pid_of >/dev/null; then break; fi
    sleep 0.25
  done
  echo "kafka: the broker did not start; the end of its log:" >&2
  tail -n 30 "$DIR/server.log" "$DIR/stdout.log" >&2 || true
  exit 1
}

stop() {
  local pid
  pid="$(pid_of)" || { echo "kafka: not running"; return 0; }
  kill -TERM "$pid"
  for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || { echo "kafka: stopped"; return 0; }; sleep 0.25; done
  echo "kafka: no clean shutdown in 30 s, killing" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

cmd="${1:-}"
if [ "$cmd" != install ]; then
  DIR="${2:-${LABELAUDIT_KAFKA_DIR:-$ROOT/.kafka}}"
  mkdir -p "$DIR" && DIR="$(cd "$DIR" && pwd)"
fi
PORT="${3:-9092}"
case "$cmd" in
  install) install_jars; echo "kafka: jars in $JARS" ;;
  start) start ;;
  stop) stop ;;
  kill) if pid="$(pid_of)"; then kill -KILL "$pid"; echo "kafka: killed $pid"; fi ;;
  status) if pid="$(pid_of)"; then echo "kafka: running (pid $pid) on 127.0.0.1:$(cat "$DIR/port")"; else echo "kafka: not running"; exit 1; fi ;;
  *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
