#!/usr/bin/env bash
# Renders docs/dashboard.png from real data: runs a real `kci serve` (public
# metrics, a throwaway directory), a real Prometheus scraping it every
# second with contrib/prometheus/kci-alerts.yml loaded, posts traffic with
# the README's API calls for a few minutes, then draws the dashboard with
# contrib/grafana/render.py and lists the alerts that fired. Everything it
# starts is stopped on exit. docs/observability.md describes the run.
#
#   contrib/grafana/demo.sh /path/to/kci [minutes]
#
# Needs Debian's prometheus and python3-matplotlib, curl and jq. Ports:
# KCI_PORT (18460), PROM_PORT (19090), HOOK_PORT (18461, a webhook receiver
# answering 200 on /ok and 404 on /gone), DEAD_PORT (18462, where nothing
# listens).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
KCI=$(realpath "${1:?usage: contrib/grafana/demo.sh /path/to/kci [minutes]}")
MINUTES=${2:-6}
KCI_PORT=${KCI_PORT:-18460}
PROM_PORT=${PROM_PORT:-19090}
HOOK_PORT=${HOOK_PORT:-18461}
DEAD_PORT=${DEAD_PORT:-18462}
OUT=${OUT:-docs/dashboard.png}
PY=${PY:-/usr/bin/python3}

for p in "$KCI_PORT" "$PROM_PORT" "$HOOK_PORT" "$DEAD_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "demo: port $p is in use; set KCI_PORT/PROM_PORT/HOOK_PORT/DEAD_PORT" >&2
    exit 1
  fi
done

work=$(mktemp -d /tmp/kci-demo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

cat >kci.toml <<EOF
[server]
listen = "127.0.0.1:$KCI_PORT"
public_metrics = true
[store]
url = "sqlite://kci-data/kci.db"
[email]
from = "Demo ISP <kci@isp.example>"
outbox = "kci-data/outbox"
[channels.email]
rate = "3/s"                 # so that bursts queue behind the provider rate
[channels.webhook]
allow_private = true         # the receivers are on loopback
timeout = "5s"
[delivery]
concurrency = 2              # few slots, so that a slow receiver holds up its channel
backoff = "2s"               # short, so that retries run out within the demo
backoff_max = "10s"
max_attempts = 4
unhealthy_after = 3
[directory]
wrong_codes_per_token = "5/1h"
[changes]
cooling_off = { standard = "1d", high = "1d", maximum = "1d" }
[defaults]
timezone = "Europe/London"
[types."notice"]
category = "general"
priority = "normal"
subject = "{{ subject | default('A notice from your provider') }}"
short = "{{ text | default('You have a new notice from your provider.') }}"
EOF

TOKEN=$("$KCI" token create --config kci.toml --name demo --scope admin | tail -1)
# A second token, for the one who guesses verification codes.
GUESSER=$("$KCI" token create --config kci.toml --name guesser --scope directory:write | tail -1)

KCI_LOG=warn "$KCI" serve --config kci.toml >kci.log 2>&1 &
pids+=($!)

# The webhook receiver: 200 on /ok, 404 on anything else; while the file
# `slow` exists it takes 4 s to answer, while `busy` exists /ok answers 429
# with Retry-After: 5.
"$PY" - "$HOOK_PORT" >hook.log 2>&1 <<'PY' &
import os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if os.path.exists("slow"):
            time.sleep(4)
        if self.path == "/ok" and os.path.exists("busy"):
            self.send_response(429)
            self.send_header("Retry-After", "5")
        else:
            self.send_response(200 if self.path == "/ok" else 404)
        self.end_headers()
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
pids+=($!)

cat >prometheus.yml <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [$repo/contrib/prometheus/kci-alerts.yml]
scrape_configs:
  - job_name: kci
    static_configs: [{targets: ["127.0.0.1:$KCI_PORT"]}]
EOF
prometheus --config.file=prometheus.yml --storage.tsdb.path=tsdb \
  --web.listen-address="127.0.0.1:$PROM_PORT" >prometheus.log 2>&1 &
pids+=($!)

for _ in $(seq 60); do
  curl -sf "127.0.0.1:$KCI_PORT/healthz" >/dev/null && curl -sf "127.0.0.1:$PROM_PORT/-/ready" >/dev/null && break
  sleep 0.5
done
curl -sf "127.0.0.1:$KCI_PORT/healthz" >/dev/null || { cat kci.log; exit 1; }

K="127.0.0.1:$KCI_PORT"
api() { curl -s -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' "$@"; echo; }

# The directory, as in the README's tour: an account with two contacts, each
# with a mailbox (the Maildir outbox) and a webhook; one webhook works, one
# answers 404 (permanent failures, then marked unhealthy), one points where
# nothing listens (transient failures, retried until they give up).
api -X PUT "$K/v1/accounts/A1" -d '{"name":"Alice Ltd","timezone":"Europe/London"}'
api -X PUT "$K/v1/accounts/A1/contacts/alice" -d '{"name":"Alice"}'
api -X PUT "$K/v1/accounts/A1/contacts/bob" -d '{"name":"Bob"}'
dest() { api -X POST "$K/v1/accounts/$1/contacts/$2/destinations" -d "{\"uri\":\"$3\",\"verified\":${4:-true}}"; }
dest A1 alice mailto:alice@example.com
dest A1 alice "http://127.0.0.1:$HOOK_PORT/ok"
dest A1 alice "http://127.0.0.1:$DEAD_PORT/hook"
dest A1 bob mailto:bob@example.com
dest A1 bob "http://127.0.0.1:$HOOK_PORT/gone"
# An unverified destination, for wrong codes.
unverified=$(dest A1 bob mailto:bob.new@example.com false | jq -r .id)
# High-security accounts: once one is told somewhere, a destination added
# there is a protected change (one pending per account at a time).
high() {
  api -X PUT "$K/v1/accounts/H$1" -d "{\"name\":\"High $1\",\"timezone\":\"Europe/London\",\"security_level\":\"high\"}" >/dev/null
  api -X PUT "$K/v1/accounts/H$1/contacts/h" -d '{"name":"Harriet"}' >/dev/null
  dest "H$1" h "mailto:h$1@example.com" >/dev/null
  dest "H$1" h "mailto:h$1.new@example.com" | jq -r '.change.id // empty'
}

start=$(date +%s)
end=$((start + MINUTES * 60))
n=0
changes=()
echo "demo: traffic for $MINUTES minutes (until $(date -u -d "@$end" +%H:%M:%S) UTC)" >&2
while [ "$(date +%s)" -lt "$end" ]; do
  t=$(($(date +%s) - start))
  n=$((n + 1))
  api -X POST "$K/v1/events" -d "{\"id\":\"evt-$n\",\"type\":\"notice\",\"account\":\"A1\",\"data\":{\"subject\":\"Order $n\",\"text\":\"Order $n is on its way.\"}}" >/dev/null
  # A burst every 90 s: 40 events at once, queued behind email's 2/s.
  if [ $((n % 90)) -eq 30 ]; then
    for i in $(seq 40); do
      printf '{"id":"burst-%s-%s","type":"notice","account":"A1","data":{"text":"Line down in your area."}}\n' "$n" "$i"
    done | curl -s -H "Authorization: Bearer $TOKEN" -H 'content-type: application/x-ndjson' \
      --data-binary @- "$K/v1/events/batch" >/dev/null
  fi
  # From minute 2, a source system posts for an account kci does not know.
  if [ "$t" -gt 120 ] && [ $((n % 3)) -eq 0 ]; then
    api -X POST "$K/v1/events" -d "{\"id\":\"stray-$n\",\"type\":\"notice\",\"account\":\"ZZ$n\",\"data\":{}}" >/dev/null
  fi
  # From 2:30 to 3:30 the receiver is slow: webhooks hold the channel's
  # two slots for 4 s each, and due ones wait past their time. From 4:30
  # to 5:00 it asks kci to slow down (429): pacing, not failure.
  if [ "$t" -ge 150 ] && [ "$t" -lt 210 ]; then touch slow; else rm -f slow; fi
  if [ "$t" -ge 270 ] && [ "$t" -lt 300 ]; then touch busy; else rm -f busy; fi
  # A protected change a minute.
  if [ $((n % 60)) -eq 10 ]; then
    c=$(high "$n")
    [ -n "$c" ] && changes+=("$c")
  fi
  # At minute 3 the customer vetoes the first one: an incident opens.
  if [ "$t" -ge 180 ] && [ -z "${vetoed:-}" ] && [ ${#changes[@]} -gt 0 ]; then
    vetoed=1
    api -X POST "$K/v1/changes/${changes[0]}/veto" -d '{"note":"not me"}' >/dev/null
  fi
  # From minute 4 someone guesses verification codes: the token's limit holds.
  if [ "$t" -gt 240 ] && [ $((n % 3)) -eq 0 ]; then
    curl -s -o /dev/null -H "Authorization: Bearer $GUESSER" -H 'content-type: application/json' \
      -X POST "$K/v1/accounts/A1/contacts/bob/destinations/$unverified/verify" -d '{"code":"000000"}'
  fi
  # Each minute a new contact whose webhook answers 404: marked unhealthy
  # after [delivery] unhealthy_after failures in a row.
  if [ $((n % 60)) -eq 45 ]; then
    api -X PUT "$K/v1/accounts/A1/contacts/c$n" -d "{\"name\":\"Contact $n\"}" >/dev/null
    dest A1 "c$n" "http://127.0.0.1:$HOOK_PORT/gone" >/dev/null
  fi
  sleep 1
done
sleep 5

case $OUT in /*) ;; *) OUT=$repo/$OUT ;; esac
"$PY" "$repo/contrib/grafana/render.py" --prometheus "http://127.0.0.1:$PROM_PORT" \
  --dashboard "$repo/contrib/grafana/kci.json" --out "$OUT" \
  --minutes "$(( MINUTES + 1 ))" --rate-interval 30s \
  --note "demo data: contrib/grafana/demo.sh ($MINUTES minutes of traffic against a real kci serve)"

echo "== alerts that fired or were pending (ALERTS over the run):"
curl -s "127.0.0.1:$PROM_PORT/api/v1/query" \
  --data-urlencode "query=max_over_time(ALERTS[$(( MINUTES + 1 ))m])" \
  | jq -r '.data.result[] | .metric | "\(.alertname) \(.alertstate) \(.severity) \(.channel // "") \(.what // "") \(.by // "")"' | sort -u
echo "== kci's metrics at the end:"
curl -s "$K/metrics" | grep -v '^#' | grep -v '_bucket' | sort
