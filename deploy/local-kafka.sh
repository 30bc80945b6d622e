#!/usr/bin/env bash
# A real single-node Apache Kafka 4.x broker (KRaft, combined broker+controller, loopback only),
# built from Maven Central jars: for the integration tests, CI and development.
# The recipe, timings and settings are explained in docs/kafka-local.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: deploy/local-kafka.sh start|stop|resume|status|wait|resolve

  resolve  fetch the broker's jars with Maven into the cache (start does this when needed)
  start    resolve, generate config (and TLS material), format storage, start the broker in
           the background, wait until every listener answers a metadata request, then print
           KEY=VALUE lines (also written to $BULKWATCH_KAFKA_DIR/broker.env):
             BULKWATCH_KAFKA_BOOTSTRAP, and with TLS BULKWATCH_KAFKA_SSL_BOOTSTRAP,
             BULKWATCH_KAFKA_CAFILE, BULKWATCH_KAFKA_SASL_SSL_BOOTSTRAP,
             BULKWATCH_KAFKA_SCRAM_MECHANISM, BULKWATCH_KAFKA_SCRAM_USER, BULKWATCH_KAFKA_SCRAM_PASSWORD
           Each start begins with empty storage.
  resume   start the broker of BULKWATCH_KAFKA_DIR again after a stop, keeping its storage
           (topics, records, committed offsets), configuration, ports, TLS material and SCRAM
           users; waits until it is ready and prints the same KEY=VALUE lines as start
  wait     wait until the broker started in BULKWATCH_KAFKA_DIR is ready
  status   print the pid and the KEY=VALUE lines; exit 0 if running, 3 if not
  stop     SIGTERM, wait up to BULKWATCH_KAFKA_STOP_TIMEOUT_S, then SIGKILL

Environment (defaults in brackets):
  BULKWATCH_KAFKA_PORT             PLAINTEXT listener port [9092]
  BULKWATCH_KAFKA_CONTROLLER_PORT  KRaft controller port [9093]
  BULKWATCH_KAFKA_SSL_PORT         add an SSL listener on this port [none]
  BULKWATCH_KAFKA_SASL_SSL_PORT    add a SASL_SSL (SCRAM-SHA-512) listener on this port [none]
  BULKWATCH_KAFKA_SCRAM_USER       SCRAM user created at format time [bulkwatch]
  BULKWATCH_KAFKA_SCRAM_PASSWORD   its password [random per start]
  BULKWATCH_KAFKA_DIR              scratch dir: config, data, logs, TLS, pid
                                   [/tmp/bulkwatch-kafka-$BULKWATCH_KAFKA_PORT]
  BULKWATCH_KAFKA_VERSION          Kafka release [kafka.version in deploy/kafka/pom.xml]
  BULKWATCH_KAFKA_LIBS             jar cache [$HOME/.cache/bulkwatch/kafka-libs/<version>]
  BULKWATCH_KAFKA_HEAP             broker heap flags [-Xms128m -Xmx512m]
  BULKWATCH_KAFKA_START_TIMEOUT_S  readiness timeout [60]
  BULKWATCH_KAFKA_STOP_TIMEOUT_S   SIGTERM grace period [30]
  BULKWATCH_PYTHON                 Python with aiokafka for the readiness check [python3]
  JAVA_HOME                        Java 17+ [java on PATH]; Maven's own settings (MAVEN_OPTS,
                                   ~/.m2) apply to the resolution.
EOF
}

die() { echo "local-kafka: error: $*" >&2; exit 1; }
say() { echo "local-kafka: $*" >&2; }

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
POM="$SCRIPT_DIR/kafka/pom.xml"
LOG4J_CONFIG="$SCRIPT_DIR/kafka/log4j2.properties"
HOST=127.0.0.1

POM_KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")
KAFKA_VERSION=${BULKWATCH_KAFKA_VERSION:-$POM_KAFKA_VERSION}
LIBS=${BULKWATCH_KAFKA_LIBS:-$HOME/.cache/bulkwatch/kafka-libs/$KAFKA_VERSION}
PORT=${BULKWATCH_KAFKA_PORT:-9092}
CONTROLLER_PORT=${BULKWATCH_KAFKA_CONTROLLER_PORT:-9093}
SSL_PORT=${BULKWATCH_KAFKA_SSL_PORT:-}
SASL_SSL_PORT=${BULKWATCH_KAFKA_SASL_SSL_PORT:-}
SCRAM_USER=${BULKWATCH_KAFKA_SCRAM_USER:-bulkwatch}
SCRAM_PASSWORD=${BULKWATCH_KAFKA_SCRAM_PASSWORD:-}
DIR=${BULKWATCH_KAFKA_DIR:-/tmp/bulkwatch-kafka-$PORT}
HEAP=${BULKWATCH_KAFKA_HEAP:--Xms128m -Xmx512m}
START_TIMEOUT_S=${BULKWATCH_KAFKA_START_TIMEOUT_S:-60}
STOP_TIMEOUT_S=${BULKWATCH_KAFKA_STOP_TIMEOUT_S:-30}
PYTHON=${BULKWATCH_PYTHON:-python3}
JAVA=${JAVA_HOME:+$JAVA_HOME/bin/}java

PID_FILE="$DIR/kafka.pid"
ENV_FILE="$DIR/broker.env"
COMPLETE_MARKER=".bulkwatch-complete"

now_s() { date +%s.%N; }
elapsed_s() { awk -v a="$1" -v b="$(now_s)" 'BEGIN { printf "%.1f", b - a }'; }
random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

# --- jars -----------------------------------------------------------------------------------

# The cache is complete when its marker names this POM (hash) and version and every jar listed.
libs_complete() {
  local marker="$LIBS/$COMPLETE_MARKER" jar
  [[ -f $marker ]] || return 1
  [[ $(head -n1 "$marker") == "$(libs_key)" ]] || return 1
  while IFS= read -r jar; do
    [[ -f "$LIBS/$jar" ]] || return 1
  done < <(tail -n +2 "$marker")
}

libs_key() { echo "kafka=$KAFKA_VERSION pom-sha256=$(sha256sum "$POM" | cut -d' ' -f1)"; }

resolve() {
  if libs_complete; then
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (Maven 3.8+ is needed to fetch the broker jars)"
  # Test sessions started together must not replace the cache under each other's brokers.
  mkdir -p "$(dirname "$LIBS")"
  local lock_fd
  exec {lock_fd}>"$LIBS.lock"
  flock "$lock_fd"
  if libs_complete; then
    exec {lock_fd}>&-
    return 0
  fi
  local partial="$LIBS.partial.$$" started
  started=$(now_s)
  say "resolving Kafka $KAFKA_VERSION jars from Maven into $LIBS"
  rm -rf "$partial"
  # Maven 3.8 prints bare colour resets even in batch mode: strip them (pipefail keeps its status).
  if ! mvn -q -B -f "$POM" -Dkafka.version="$KAFKA_VERSION" -Dkafka.libs.dir="$partial" \
      dependency:copy-dependencies 2>&1 | sed -e 's/\x1b\[[0-9;]*m//g' -e '/^$/d' >&2; then
    rm -rf "$partial"
    die "Maven could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION (output above)"
  fi
  ls "$partial"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 \
    || die "Maven finished but $partial has no kafka_2.13-$KAFKA_VERSION.jar"
  { libs_key; (cd "$partial" && ls -1 -- *.jar); } > "$partial/$COMPLETE_MARKER"
  rm -rf "$LIBS"
  mv -T "$partial" "$LIBS"
  exec {lock_fd}>&-
  say "resolved $(($(wc -l < "$LIBS/$COMPLETE_MARKER") - 1)) jars in $(elapsed_s "$started") s"
}

# --- process --------------------------------------------------------------------------------

# Pid of the broker of $DIR if it is running (guards against a recycled pid).
running_pid() {
  [[ -f $PID_FILE ]] || return 1
  local pid
  pid=$(<"$PID_FILE")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "kafka.Kafka $DIR/server.properties" || return 1
  grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null && return 1
  echo "$pid"
}

port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

check_java() {
  command -v "$JAVA" >/dev/null || die "java not found (Kafka 4 needs Java 17+; set JAVA_HOME)"
  local major
  major=$("$JAVA" -version 2>&1 | sed -n 's/.* version "\([0-9]*\).*/\1/p' | head -n1)
  [[ -n $major && $major -ge 17 ]] || die "Kafka 4 needs Java 17+, $JAVA is version ${major:-unknown}"
}

java_opts() {
  # GC flags as in Kafka's bin/kafka-run-class.sh; heap is ours (see docs/kafka-local.md).
  # shellcheck disable=SC2206  # HEAP is a list of flags on purpose
  JAVA_OPTS=($HEAP -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
    -Djava.awt.headless=true "-Dkafka.logs.dir=$DIR/logs"
    "-Dlog4j2.configurationFile=$LOG4J_CONFIG")
}

# --- configuration --------------------------------------------------------------------------

generate_tls() {
  command -v openssl >/dev/null || die "openssl is needed for the SSL/SASL_SSL listeners"
  local tls="$DIR/tls"
  mkdir -p "$tls"
  KEYSTORE_PASSWORD=$(random_hex 12)
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=bulkwatch local Kafka CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$tls/broker.key" -out "$tls/broker.csr" 2>/dev/null
  cat > "$tls/broker.ext" <<'EOF'
subjectAltName = DNS:localhost, IP:127.0.0.1
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EOF
  openssl x509 -req -days 3650 -in "$tls/broker.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
    -CAcreateserial -extfile "$tls/broker.ext" -out "$tls/broker.pem" 2>/dev/null
  openssl pkcs12 -export -name broker -in "$tls/broker.pem" -inkey "$tls/broker.key" \
    -certfile "$tls/ca.pem" -out "$tls/broker.p12" -passout "pass:$KEYSTORE_PASSWORD"
}

write_server_properties() {
  local listeners="PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT"
  [[ -n $SSL_PORT ]] && listeners+=",SSL://$HOST:$SSL_PORT"
  [[ -n $SASL_SSL_PORT ]] && listeners+=",SASL_SSL://$HOST:$SASL_SSL_PORT"
  cat > "$DIR/server.properties" <<EOF
# Generated by deploy/local-kafka.sh: single node, combined broker + controller, loopback only.
process.roles=broker,controller
node.id=1
# Dynamic KRaft quorum (kraft.version 1): storage is formatted with --standalone.
controller.quorum.bootstrap.servers=$HOST:$CONTROLLER_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listeners=$listeners
advertised.listeners=$listeners
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL
log.dirs=$DIR/data

# One replica of everything (the defaults of 3 / min ISR 2 cannot be met by one node).
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# Fast tests: internal topics with one partition (default 50), no group join delay (default 3 s).
offsets.topic.num.partitions=1
transaction.state.log.num.partitions=1
group.initial.rebalance.delay.ms=0
num.partitions=1
# Tests create their topics explicitly; a typo must fail instead of creating a topic.
auto.create.topics.enable=false
# The log cleaner allocates this buffer on the heap at start-up (default 128 MiB, most of an
# idle broker's live heap); 16 MiB still compacts the small internal topics of a test broker.
log.cleaner.dedupe.buffer.size=16777216
EOF
  if [[ -n $SSL_PORT || -n $SASL_SSL_PORT ]]; then
    cat >> "$DIR/server.properties" <<EOF

ssl.keystore.type=PKCS12
ssl.keystore.location=$DIR/tls/broker.p12
ssl.keystore.password=$KEYSTORE_PASSWORD
ssl.key.password=$KEYSTORE_PASSWORD
ssl.client.auth=none
EOF
  fi
  if [[ -n $SASL_SSL_PORT ]]; then
    cat >> "$DIR/server.properties" <<'EOF'
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
EOF
  fi
}

write_env_file() {
  {
    echo "BULKWATCH_KAFKA_BOOTSTRAP=$HOST:$PORT"
    if [[ -n $SSL_PORT ]]; then
      echo "BULKWATCH_KAFKA_SSL_BOOTSTRAP=$HOST:$SSL_PORT"
    fi
    if [[ -n $SSL_PORT || -n $SASL_SSL_PORT ]]; then
      echo "BULKWATCH_KAFKA_CAFILE=$DIR/tls/ca.pem"
    fi
    if [[ -n $SASL_SSL_PORT ]]; then
      echo "BULKWATCH_KAFKA_SASL_SSL_BOOTSTRAP=$HOST:$SASL_SSL_PORT"
      echo "BULKWATCH_KAFKA_SCRAM_MECHANISM=SCRAM-SHA-512"
      echo "BULKWATCH_KAFKA_SCRAM_USER=$SCRAM_USER"
      echo "BULKWATCH_KAFKA_SCRAM_PASSWORD=$SCRAM_PASSWORD"
    fi
  } > "$ENV_FILE"
}

# 22 characters of base64url (16 random bytes), as StorageTool random-uuid prints, without the
# JVM start; never starting with '-' so the tool's argument parser cannot take it for a flag.
new_cluster_id() {
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [[ $id != -* ]] && { echo "$id"; return; }
  done
}

format_storage() {
  local args=(format --standalone --cluster-id "$(new_cluster_id)" --config "$DIR/server.properties")
  if [[ -n $SASL_SSL_PORT ]]; then
    args+=(--add-scram "SCRAM-SHA-512=[name=$SCRAM_USER,password=$SCRAM_PASSWORD]")
  fi
  if ! "$JAVA" -Xmx256m "-Dkafka.logs.dir=$DIR/logs" "-Dlog4j2.configurationFile=$LOG4J_CONFIG" \
      -cp "$LIBS/*" kafka.tools.StorageTool "${args[@]}" > "$DIR/logs/format.log" 2>&1; then
    cat "$DIR/logs/format.log" >&2
    die "kafka.tools.StorageTool format failed"
  fi
}

# --- readiness ------------------------------------------------------------------------------

# Every listener in broker.env must answer a real metadata request (aiokafka admin client)
# while the broker process is alive. Exit 0 ready, 1 not ready / died.
READY_CHECK_PY=$(cat <<'PY'
import asyncio
import logging
import sys
import time

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.helpers import create_ssl_context

logging.disable(logging.CRITICAL)  # connection refusals while starting are expected
env_file, pid, timeout_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
env = dict(line.split("=", 1) for line in open(env_file).read().splitlines() if "=" in line)
listeners = {"PLAINTEXT": (env["BULKWATCH_KAFKA_BOOTSTRAP"], {})}
if "BULKWATCH_KAFKA_SSL_BOOTSTRAP" in env:
    tls = {"security_protocol": "SSL",
           "ssl_context": create_ssl_context(cafile=env["BULKWATCH_KAFKA_CAFILE"])}
    listeners["SSL"] = (env["BULKWATCH_KAFKA_SSL_BOOTSTRAP"], tls)
if "BULKWATCH_KAFKA_SASL_SSL_BOOTSTRAP" in env:
    sasl = {"security_protocol": "SASL_SSL",
            "ssl_context": create_ssl_context(cafile=env["BULKWATCH_KAFKA_CAFILE"]),
            "sasl_mechanism": env["BULKWATCH_KAFKA_SCRAM_MECHANISM"],
            "sasl_plain_username": env["BULKWATCH_KAFKA_SCRAM_USER"],
            "sasl_plain_password": env["BULKWATCH_KAFKA_SCRAM_PASSWORD"]}
    listeners["SASL_SSL"] = (env["BULKWATCH_KAFKA_SASL_SSL_BOOTSTRAP"], sasl)


def alive():
    try:
        with open(f"/proc/{pid}/status") as status:
            return not any(l.startswith("State:") and "Z" in l.split()[1] for l in status)
    except FileNotFoundError:
        return False


async def answers(bootstrap, options):
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000, **options)
    try:
        await admin.start()
        return bool((await admin.describe_cluster())["brokers"])
    except Exception:
        return False
    finally:
        try:
            await admin.close()
        except Exception:
            pass


async def main():
    deadline = time.monotonic() + timeout_s
    pending = dict(listeners)
    while True:
        if not alive():
            print(f"broker process {pid} exited", file=sys.stderr)
            return 1
        for name, (bootstrap, options) in list(pending.items()):
            if await answers(bootstrap, options):
                del pending[name]
        if not pending:
            return 0
        if time.monotonic() > deadline:
            print(f"no metadata answer within {timeout_s} s on: {', '.join(pending)}",
                  file=sys.stderr)
            return 1
        await asyncio.sleep(0.2)


sys.exit(asyncio.run(main()))
PY
)

# wait_ready PID START_TIME [LAUNCH_TIME]
wait_ready() {
  local pid=$1 started=$2 launched=${3:-$2}
  [[ -f $ENV_FILE ]] || die "no $ENV_FILE: was the broker started with this BULKWATCH_KAFKA_DIR?"
  "$PYTHON" -c 'import aiokafka' 2>/dev/null \
    || die "$PYTHON cannot import aiokafka (needed for the readiness check; set BULKWATCH_PYTHON)"
  if ! "$PYTHON" -c "$READY_CHECK_PY" "$ENV_FILE" "$pid" "$START_TIMEOUT_S"; then
    say "broker not ready; last lines of $DIR/logs/server.log and kafka.out:"
    tail -n 30 "$DIR/logs/server.log" "$DIR/logs/kafka.out" >&2 2>/dev/null || true
    return 1
  fi
  local took
  took="$(elapsed_s "$launched") s"
  if [[ $launched != "$started" ]]; then
    took+=" after launch, $(elapsed_s "$started") s with config/format"
  fi
  say "broker ready: $took (pid $pid, logs in $DIR/logs)"
}

# --- commands -------------------------------------------------------------------------------

cmd_start() {
  local pid started p
  if pid=$(running_pid); then
    die "a broker is already running from $DIR (pid $pid); run stop first"
  fi
  for p in "$PORT" "$CONTROLLER_PORT" $SSL_PORT $SASL_SSL_PORT; do
    if port_in_use "$p"; then
      die "port $p on $HOST is already in use"
    fi
  done
  check_java
  resolve
  started=$(now_s)

  umask 077  # the scratch dir holds keys and passwords
  mkdir -p "$DIR"
  rm -rf "$DIR/data" "$DIR/logs" "$DIR/tls" "$ENV_FILE" "$PID_FILE"
  mkdir -p "$DIR/data" "$DIR/logs"
  if [[ -n $SASL_SSL_PORT && -z $SCRAM_PASSWORD ]]; then
    SCRAM_PASSWORD=$(random_hex 12)
  fi
  if [[ -n $SSL_PORT || -n $SASL_SSL_PORT ]]; then
    generate_tls
  fi
  write_server_properties
  write_env_file
  format_storage

  launch "$started"
}

# launch START_TIME: run the broker of $DIR in the background and wait until it is ready.
launch() {
  local started=$1 launched pid
  java_opts
  launched=$(now_s)
  # setsid: the broker gets its own session, so a Ctrl-C in the caller's terminal does not kill
  # it half-way; the inner shell writes its own pid, then becomes java with exec.
  # shellcheck disable=SC2016  # $$ and $@ belong to the inner shell
  setsid "$BASH" -c 'echo $$ > "$0"; exec "$@"' "$PID_FILE" \
    "$JAVA" "${JAVA_OPTS[@]}" -cp "$LIBS/*" kafka.Kafka "$DIR/server.properties" \
    < /dev/null >> "$DIR/logs/kafka.out" 2>&1 &
  for _ in $(seq 50); do
    [[ -s $PID_FILE ]] && break
    sleep 0.1
  done
  pid=$(<"$PID_FILE")
  if ! wait_ready "$pid" "$started" "$launched"; then
    cmd_stop >/dev/null 2>&1 || true
    die "the broker did not become ready; stopped it"
  fi
  cat "$ENV_FILE"
}

# Same storage, config and ports as the last start: what a broker restart after a crash or an
# upgrade sees. The listeners come from server.properties, so BULKWATCH_KAFKA_*_PORT are ignored.
cmd_resume() {
  local pid p
  if pid=$(running_pid); then
    die "a broker is already running from $DIR (pid $pid)"
  fi
  [[ -f $DIR/server.properties && -f $ENV_FILE ]] \
    || die "no broker was started from $DIR (no server.properties or broker.env): use start"
  [[ -f $DIR/data/meta.properties ]] || die "$DIR/data holds no formatted storage: use start"
  for p in $(sed -n 's/^listeners=//p' "$DIR/server.properties" | tr ',' '\n' | sed 's/.*://'); do
    if port_in_use "$p"; then
      die "port $p on $HOST is already in use"
    fi
  done
  check_java
  resolve
  rm -f "$PID_FILE"
  say "resuming the broker of $DIR with its data"
  launch "$(now_s)"
}

cmd_wait() {
  local pid
  pid=$(running_pid) || die "no broker running from $DIR"
  wait_ready "$pid" "$(now_s)"
  cat "$ENV_FILE"
}

cmd_status() {
  local pid
  if pid=$(running_pid); then
    say "running, pid $pid, dir $DIR"
    cat "$ENV_FILE"
  else
    say "not running ($DIR)"
    exit 3
  fi
}

cmd_stop() {
  local pid started
  if ! pid=$(running_pid); then
    rm -f "$PID_FILE"
    say "not running ($DIR)"
    return 0
  fi
  started=$(now_s)
  kill -TERM "$pid"
  local polls=$((STOP_TIMEOUT_S * 10))
  while running_pid >/dev/null && ((polls-- > 0)); do
    sleep 0.1
  done
  if running_pid >/dev/null; then
    say "no exit ${STOP_TIMEOUT_S} s after SIGTERM; sending SIGKILL to $pid"
    kill -KILL "$pid" 2>/dev/null || true
    while running_pid >/dev/null; do sleep 0.1; done
  fi
  rm -f "$PID_FILE"
  say "stopped pid $pid in $(elapsed_s "$started") s"
}

case "${1:-}" in
  resolve) check_java; resolve; echo "$LIBS" ;;
  start) cmd_start ;;
  resume) cmd_resume ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  wait) cmd_wait ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
