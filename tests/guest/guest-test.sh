#!/bin/sh
# tests/guest/guest-test.sh — checks of virtio_nn.ko, run INSIDE the
# guest (busybox sh) by run-guest-test.py, which adds this file and
# /etc/nn-expected (expected answers computed on the host with
# `nn-model predict`) to the initramfs.
#
# The /dev/neural_network magics and header layout come from /etc/nn-expected
# too (DEV_*: the runner writes them from `nn-model abi`, i.e. nn-core's
# dev_abi.rs), and the kernel log is judged by the runner (nnlib's
# bad_log_lines, tests/kernel-log-bad.txt): nothing here keeps a copy.
#
# Usage (in the guest): sh /bin/nn-guest-test
# Prints "CHECK OK: ..." / "CHECK FAIL: ..." lines and finally
# "GUEST-TEST: PASS" or "GUEST-TEST: FAIL (n)". Lines "@@HOST:<what>" ask the
# host runner to act (stop/cont the daemon, unplug/replug the device); the
# runner answers with one line on the console when done.

P=/proc/neural_network/predict
Q=/proc/neural_network/predict_q16
INFO=/sys/kernel/neural_network/model_info
PARAM=/sys/module/virtio_nn/parameters/timeout_ms
PERF=/sys/kernel/neural_network/performance
HEALTH=/sys/kernel/neural_network/health
CONS=/lib/modules/nn_consumer.ko
BENCH=/lib/modules/nn_bench.ko
DEV=/dev/neural_network
CPARAM=/sys/module/virtio_nn/parameters/cache_ms
FB=/sys/module/virtio_nn/parameters/fallback_max_bytes
. /etc/nn-expected

# Users for the isolation checks (busybox su as root asks no password and
# sets the supplementary groups from /etc/group): alice and bob, bob in
# nnusers (1234).
printf 'root:x:0:0:root:/root:/bin/sh\nalice:x:1001:1001::/tmp:/bin/sh\nbob:x:1002:1002::/tmp:/bin/sh\n' >/etc/passwd
printf 'root:x:0:\nalice:x:1001:\nbob:x:1002:\nnnusers:x:1234:bob\n' >/etc/group
# as USER CMD : CMD (a shell command line) as USER, in the caller's session
as() { su -s /bin/sh "$1" -c "$2"; }
# devrun_as USER FILE : devrun as USER (FILE readable by all)
devrun_as() {
    as "$1" "sh -c 'exec 3<>$DEV; dd if=$2 bs=8M 2>/dev/null >&3; dd bs=8M count=1 2>/dev/null <&3'" |
        od -An -t d4 -v | tr -s ' \n' '  ' | sed 's/^ //; s/ $//'
}

fails=0
ok() { echo "CHECK OK: $1"; }
bad() { echo "CHECK FAIL: $1"; fails=$((fails + 1)); }
# expect_eq NAME GOT WANT
expect_eq() {
    if [ "$2" = "$3" ]; then ok "$1"; else bad "$1: got '$2' want '$3'"; fi
}
# expect_err NAME ERRTEXT CMD... : CMD must fail with ERRTEXT in its output
expect_err() {
    name=$1 want=$2
    shift 2
    out=$("$@" 2>&1)
    rc=$?
    if [ $rc -ne 0 ] && echo "$out" | grep -q "$want"; then
        ok "$name"
    else
        bad "$name: rc=$rc out='$out' (want failure with '$want')"
    fi
}
# host WHAT : ask the runner to do WHAT and wait for its answer line
host() {
    echo "@@HOST:$1"
    read -r _ack
}
wr() { echo "$2" >"$1"; }
# kv FILE KEY : the value of a "KEY: value" line
kv() { sed -n "s/^$2: //p" "$1"; }
# le32 N : N as 4 little-endian bytes
le32() {
    n=$1
    [ "$n" -lt 0 ] && n=$((n + 4294967296))
    printf "\\$(printf %03o $((n & 255)))\\$(printf %03o $(((n >> 8) & 255)))\\$(printf %03o $(((n >> 16) & 255)))\\$(printf %03o $(((n >> 24) & 255)))"
}
# mkreq MAGIC NUM_SAMPLES IN_DIM TIMEOUT_MS VALUE... : a /dev/neural_network
# request (the field order is checked against DEV_REQUEST_HEADER below)
mkreq() {
    le32 "$1"
    le32 "$2"
    le32 "$3"
    le32 "$4"
    shift 4
    for v in "$@"; do le32 "$v"; done
}
# devrun FILE : one write of FILE to /dev/neural_network, then one read of the
# answer on the same open file, as decimal 32-bit words
devrun() {
    sh -c "exec 3<>$DEV; dd if=$1 bs=8M 2>&1 >&3 | grep -v records; dd bs=8M count=1 2>/dev/null <&3" |
        od -An -t d4 -v | tr -s ' \n' '  ' | sed 's/^ //; s/ $//'
}
# devwrite FILE : one write of FILE to /dev/neural_network (errors on stderr)
devwrite() { sh -c "exec 3<>$DEV; dd if=$1 bs=8M >&3"; }
# devraw FILE : one write of FILE, then the raw answer (up to 16 MiB) on stdout
devraw() { sh -c "exec 3<>$DEV; dd if=$1 bs=8M 2>/dev/null >&3 && dd bs=16M count=1 2>/dev/null <&3"; }
# words : stdin's first 16 bytes as decimal 32-bit words (an answer's header)
words() { head -c 16 | od -An -t d4 -v | tr -s ' \n' '  ' | sed 's/^ //; s/ $//'; }
# kernel_log_verdict : the runner's verdict on the kernel log so far ("clean"
# or what it found; nnlib.bad_log_lines is the one list of bad lines)
kernel_log_verdict() {
    echo "@@HOST:kernel-log" >&2
    dmesg >&2
    echo "@@KERNEL-LOG-END" >&2
    read -r verdict
    echo "$verdict"
}
# cons ARGS... : insmod nn_consumer with ARGS, print its last_output, unload
cons() {
    insmod $CONS "$@" || return 1
    cat /sys/module/nn_consumer/parameters/last_output
    rmmod nn_consumer
}

echo "== interface"
echo "    clocksource: $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null) ($(dmesg | grep -m1 -o 'tsc: .*'))"
echo "    device features: $(cat /sys/bus/virtio/devices/virtio*/features 2>/dev/null)"
expect_eq "proc modes" "$(ls -l $P $Q | cut -c1-10 | tr '\n' ' ')" "-rw-rw-rw- -rw-rw-rw- "
expect_eq "model_info" "$(head -n 2 $INFO | tr '\n' ' ')" "Model: $MODEL Status: active "
# The seed's files keep its text: its lines first, spelled as it spells them.
expect_eq "model_info starts with the seed's three lines" \
    "$(head -n 3 $INFO | sed 's/^Predictions: [0-9][0-9]*$/Predictions: N/' | tr '\n' ' ')" \
    "Model: $MODEL Status: active Predictions: N "
expect_eq "performance starts with the seed's three lines" \
    "$(head -n 3 $PERF | sed 's/: [0-9][0-9]*$/: N/' | tr '\n' ' ')" \
    "Cache hits: N Cache misses: N Errors: N "
# One value per file in the device's own sysfs directory.
NNDEV=$(ls -d /sys/bus/virtio/devices/virtio*/neural_network 2>/dev/null | head -n 1)
expect_eq "device sysfs directory" "$([ -n "$NNDEV" ] && ls $NNDEV | tr '\n' ' ')" \
    "generation input_dim max_batch num_layers output_dim queues status "
if [ -n "$NNDEV" ]; then
    expect_eq "device sysfs values match model_info" \
        "$(cat $NNDEV/generation $NNDEV/status $NNDEV/input_dim $NNDEV/output_dim $NNDEV/num_layers $NNDEV/max_batch $NNDEV/queues | tr '\n' ' ')" \
        "$(kv $INFO Generation) $(kv $INFO Status) $(kv $INFO Input) $(kv $INFO Output) $(kv $INFO Layers) $(kv $INFO 'Max batch') $(kv $INFO Queues) "
    expect_eq "device sysfs modes" "$(ls -l $NNDEV | grep -c '^-r--r--r--')" "7"
fi
expect_eq "timeout_ms default" "$(cat $PARAM)" "5000"
expect_eq "cache_ms default" "$(cat $CPARAM)" "1000"
expect_eq "fallback_max_bytes default" "$(cat $FB)" "1048576"
# The CPU fallback is off except where it is tested (below): the other
# checks want the device's own answers, timeouts and errors.
echo 0 >$FB
# The result cache is off except where it is tested: the other checks want
# the device's own answers, timeouts and errors.
echo 0 >$CPARAM
expect_err "read before any prediction: ENODATA" "No data available" cat $P

echo "== one prediction end to end (the seed's usage)"
echo "$IN1" >$P
expect_eq "write rc" "$?" "0"
expect_eq "predict answer" "$(cat $P)" "$OUT1"
expect_eq "read again" "$(cat $P)" "$OUT1"
expect_eq "byte-by-byte read" "$(dd if=$P bs=1 2>/dev/null)" "$OUT1"
expect_eq "3-byte reads" "$(dd if=$P bs=3 2>/dev/null)" "$OUT1"
expect_eq "skip past the end" "$(dd if=$P bs=1 skip=1000 2>/dev/null | wc -c)" "0"
echo " $IN1_SPACED " >$P
expect_eq "whitespace and signs accepted" "$(cat $P)" "$OUT1"

echo "== predict_q16: exact answers"
echo "$Q1_IN" >$Q
expect_eq "q16 answer" "$(cat $Q)" "$Q1_OUT"
echo "$QX_IN" >$Q
expect_eq "q16 extreme inputs" "$(cat $Q)" "$QX_OUT"
echo "$WX_IN" >$P
expect_eq "predict extreme inputs" "$(cat $P)" "$WX_OUT"
expect_eq "predict and predict_q16 keep separate answers" "$(cat $Q)" "$QX_OUT"

echo "== bad writes: EINVAL, nothing changes"
expect_err "too few values" "Invalid argument" wr $P "1,2"
expect_err "too many values" "Invalid argument" wr $P "$IN1,1"
expect_err "not numbers" "Invalid argument" wr $P "a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p"
expect_err "value 40000 overflows" "Invalid argument" wr $P "40000,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16"
expect_err "value -32769 overflows" "Invalid argument" wr $P "-32769,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16"
expect_err "empty field" "Invalid argument" wr $P "1,,3,4,5,6,7,8,9,10,11,12,13,14,15,16"
expect_err "empty write" "Invalid argument" wr $P ""
expect_err "hex" "Invalid argument" wr $P "0x1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16"
expect_err "q16 above i32" "Invalid argument" wr $Q "2147483648,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0"
expect_err "q16 below i32" "Invalid argument" wr $Q "-2147483649,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0"
head -c 70000 /dev/zero | tr '\0' '1' >/tmp/big
expect_err "write over 64 KiB" "Invalid argument" sh -c "cat /tmp/big >$P"
expect_eq "answer unchanged after bad writes" "$(cat $P)" "$WX_OUT"
expect_eq "q16 answer unchanged after bad writes" "$(cat $Q)" "$QX_OUT"

echo "== whose answer: own file first, then the session's"
expect_err "other session has no answer" "No data available" setsid cat $P
out=$(sh -c "exec 3<>$P; echo '$IN1' >&3; echo '$WX_IN' >$P; cat <&3")
expect_eq "fd keeps its own answer" "$out" "$OUT1"
expect_eq "session got the last answer" "$(cat $P)" "$WX_OUT"

echo "== concurrent requests"
i=0
while [ $i -lt 16 ]; do
    sh -c "exec 3<>$Q; echo '$Q1_IN' >&3; cat <&3" >/tmp/conc.$i 2>&1 &
    i=$((i + 1))
done
wait
good=$(cat /tmp/conc.* | grep -cx -- "$Q1_OUT")
expect_eq "16 concurrent predictions" "$good" "16"

echo "== sysfs: model_info, performance, health"
in_w=${MODEL%%x*}
out_w=${MODEL##*x}
expect_eq "model_info widths" "$(kv $INFO Input)x$(kv $INFO Output)" "${in_w}x${out_w}"
expect_eq "model_info queues in use" "$(kv $INFO Queues)" "$QUEUES"
ncpu=$(nproc)
if [ "$QUEUES" -ge 2 ] && [ "$ncpu" -ge 2 ]; then
    before=$(kv $INFO 'Queue requests')
    taskset 1 sh -c "echo '$Q1_IN' >$Q"
    taskset 2 sh -c "echo '$Q1_IN' >$Q"
    after=$(kv $INFO 'Queue requests')
    echo "    requests per queue: $before -> $after"
    d0=$(($(echo "$after" | cut -d, -f1) - $(echo "$before" | cut -d, -f1)))
    d1=$(($(echo "$after" | cut -d, -f2) - $(echo "$before" | cut -d, -f2)))
    expect_eq "CPU 0 uses queue 0, CPU 1 queue 1" "$d0 $d1" "1 1"
fi
expect_eq "model_info predictions counted" "$(kv $INFO Predictions)" "$(kv $PERF samples)"
cat $PERF | tr '\n' ' '; echo
req=$(kv $PERF requests)
p50=$(kv $PERF latency_p50_us)
p99=$(kv $PERF latency_p99_us)
expect_eq "performance: requests counted" "$([ "$req" -ge 20 ] && echo yes)" "yes"
expect_eq "performance: errors counted" "$([ "$(kv $PERF Errors)" -ge 1 ] && echo yes)" "yes"
expect_eq "performance: 0 < p50 <= p99 <= 2*max" \
    "$([ "$p50" -gt 0 ] && [ "$p99" -ge "$p50" ] && [ "$p99" -le $((2 * $(kv $PERF latency_max_us) + 2)) ] && echo yes)" "yes"
expect_eq "health: unknown before the first check" "$(kv $HEALTH status)" "unknown"
echo 1 >$HEALTH
expect_eq "health: a check on demand" "$(kv $HEALTH status) $(kv $HEALTH checks) $(kv $HEALTH consecutive_errors)" "ok 1 0"
echo 1000 >$CPARAM
r0=$(kv $PERF requests)
echo 1 >$HEALTH
echo 1 >$HEALTH
expect_eq "health checks bypass the result cache" "$(($(kv $PERF requests) - r0))" "2"
echo 0 >$CPARAM
expect_eq "health: default interval" "$(cat /sys/module/virtio_nn/parameters/health_interval_ms)" "60000"

echo "== isolation between users: /proc session answers"
echo "$Q1_IN" >$Q
expect_err "another uid in the same session gets no answer" "No data available" as alice "cat $Q"
as alice "echo '$QX_IN' >$Q"
expect_eq "a uid reads its own answer in the session" "$(as alice "cat $Q")" "$QX_OUT"
expect_eq "and the other uid its own" "$(cat $Q)" "$Q1_OUT"
i=0
while [ $i -lt 40 ]; do as bob "setsid sh -c \"echo '$Q1_IN' >$Q\""; i=$((i + 1)); done
expect_eq "40 sessions of another uid do not evict this session's answer" "$(cat $Q)" "$Q1_OUT"
# PID reuse: a victim session writes and ends; a new session that gets the
# same session id (pid_max lowered so that ids come round quickly) must not
# read the victim's answer.
pmax=$(cat /proc/sys/kernel/pid_max)
echo 400 >/proc/sys/kernel/pid_max
# from here on new ids go round 300..399 (below 300 at first on a young guest)
while [ "$(sh -c 'echo $$')" -lt 300 ]; do :; done
printf '%s\n' "echo '$QX_IN' >$Q" "cut -d' ' -f6 /proc/self/stat >/tmp/vsid" >/tmp/victim.sh
as alice "setsid sh /tmp/victim.sh"
vs=$(cat /tmp/vsid)
cat >/tmp/reuse.sh <<EOF
i=0
while [ \$i -lt 2000 ]; do
    sh -c '[ \$\$ -eq $vs ] || exit 7; exec setsid cat $Q'
    rc=\$?
    [ \$rc -ne 7 ] && exit \$rc
    i=\$((i + 1))
done
echo "session id $vs not reused"
EOF
out=$(as alice "sh /tmp/reuse.sh" 2>&1)
echo "$pmax" >/proc/sys/kernel/pid_max
expect_eq "a new session with a reused session id ($vs) gets no answer" "$out" "cat: read error: No data available"

echo "== /dev/neural_network (binary interface)"
expect_eq "device node mode" "$(ls -l $DEV | cut -c1-10)" "crw-rw-rw-"
q1=$(echo "$Q1_IN" | tr ',' ' ')
q1out=$(echo "$Q1_OUT" | tr ',' ' ')
RQ=$DEV_REQUEST_MAGIC RN=$DEV_NULL_MAGIC RS=$DEV_RESPONSE_MAGIC
expect_eq "/dev header layouts as mkreq and the checks below write them" \
    "$DEV_REQUEST_HEADER / $DEV_RESPONSE_HEADER" \
    "magic num_samples in_dim timeout_ms / magic num_samples out_dim generation"
mkreq $RQ 1 $in_w 0 $q1 >/tmp/req1
expect_eq "one sample" "$(devrun /tmp/req1)" "$RS 1 $out_w 1 $q1out"
mkreq $RQ 3 $in_w 2000 $q1 $q1 $q1 >/tmp/req3
expect_eq "a batch of 3 samples" "$(devrun /tmp/req3)" "$RS 3 $out_w 1 $q1out $q1out $q1out"
expect_eq "partial reads" "$(sh -c "exec 3<>$DEV; dd if=/tmp/req1 bs=1M 2>/dev/null >&3; dd bs=5 2>/dev/null <&3" | od -An -t d4 -v | tr -s ' \n' '  ' | sed 's/^ //; s/ $//')" "$RS 1 $out_w 1 $q1out"
expect_err "read before any write: ENODATA" "No data available" dd if=$DEV bs=64 count=1
reqs=$(kv $PERF requests)
mkreq $RN 3 $in_w 0 $q1 $q1 $q1 >/tmp/null3
expect_eq "null request (NNRN): header only, out_dim 0" "$(devrun /tmp/null3)" "$RS 3 0 1"
expect_eq "null requests are not counted in performance" "$(kv $PERF requests)" "$reqs"
mkreq $RN 1 $((in_w - 1)) 0 ${q1#* } >/tmp/bad
expect_err "/dev: null request of the wrong width: EINVAL" "Invalid argument" devwrite /tmp/bad
mkreq $RQ 1 $in_w >/tmp/bad; head -c 8 /tmp/req1 >/tmp/bad
expect_err "/dev: short write: EINVAL" "Invalid argument" devwrite /tmp/bad
mkreq $((RQ ^ 0x09000000)) 1 $in_w 0 $q1 >/tmp/bad # "NNRX"
expect_err "/dev: bad magic: EINVAL" "Invalid argument" devwrite /tmp/bad
mkreq $RQ 0 $in_w 0 $q1 >/tmp/bad
expect_err "/dev: zero samples: EINVAL" "Invalid argument" devwrite /tmp/bad
mkreq $RQ 1 $((in_w - 1)) 0 ${q1#* } >/tmp/bad
expect_err "/dev: input width not the model's: EINVAL" "Invalid argument" devwrite /tmp/bad
mkreq $RQ 2 $in_w 0 $q1 >/tmp/bad
expect_err "/dev: length does not match the header: EINVAL" "Invalid argument" devwrite /tmp/bad
mkreq $RQ 1 $in_w -5 $q1 >/tmp/bad
expect_err "/dev: negative timeout: EINVAL" "Invalid argument" devwrite /tmp/bad
maxb=$(kv $INFO 'Max batch')
{ mkreq $RQ $((maxb + 1)) $in_w 0; head -c $(((maxb + 1) * in_w * 4)) /dev/zero; } >/tmp/bad
expect_err "/dev: batch above max_batch ($maxb): EINVAL" "Invalid argument" devwrite /tmp/bad
{ mkreq $RQ 65536 16 0; head -c $((65536 * 16 * 4)) /dev/zero; } >/tmp/bad
expect_err "/dev: write over 4 MiB: E2BIG" "Argument list too long" devwrite /tmp/bad
rm -f /tmp/bad
# The header is checked before the inputs are copied: nn-devwrite's bytes
# after the header are unreadable (a copy of them would fail with EFAULT).
expect_err "/dev: a 4 MiB write with a bad magic is refused by its header alone: EINVAL" \
    "Invalid argument" nn-devwrite 4194304 $((RQ ^ 0x09000000)) 1 $in_w 0
expect_err "/dev: a header that claims a huge batch for a 4 MiB write: EINVAL" \
    "Invalid argument" nn-devwrite 4194304 $RQ 4096 4096 0
expect_err "/dev: a header whose sizes overflow: EINVAL" \
    "Invalid argument" nn-devwrite 4194304 $RQ 4294967295 4294967295 0
expect_err "/dev: a batch above the protocol's 4096 samples, refused before its inputs: EINVAL" \
    "Invalid argument" nn-devwrite $((16 + 8192 * 4)) $RQ 8192 1 0
expect_err "/dev: a valid header whose inputs cannot be read: EFAULT" \
    "Bad address" nn-devwrite $((16 + 4 * in_w)) $RQ 1 $in_w 0
out=$(sh -c "exec 3<>$DEV; rmmod virtio_nn" 2>&1)
expect_eq "rmmod refused while /dev/neural_network is open" "$(echo "$out" | grep -c 'in use\|Resource\|busy')" "1"

if [ -e $CONS ]; then
    echo "== kernel API (nn_consumer.ko)"
    expect_eq "neural_api_predict" "$(cons input=$IN1)" "$OUT1"
    expect_eq "neural_predict_production" "$(cons mode=production input=$IN1)" "$OUT1"
    expect_eq "neural_api_predict, Q16.16" "$(cons q16=1 input=$QX_IN)" "$QX_OUT"
    expect_eq "neural_api_predict_batch (8 samples)" "$(cons mode=batch batch=8 input=$IN1)" \
        "$OUT1;$OUT1;$OUT1;$OUT1;$OUT1;$OUT1;$OUT1;$OUT1"
    info=$(cons mode=info)
    expect_eq "neural_api_get_info" "${info%,*,*}" "$in_w,$out_w"
    maxb=$(echo "$info" | cut -d, -f3)
    expect_err "API: input size not the model's: EINVAL" "Invalid argument" insmod $CONS input=$IN1 in_size=$((in_w - 1))
    expect_err "API: output size not the model's: EINVAL" "Invalid argument" insmod $CONS input=$IN1 out_size=$((out_w + 1))
    expect_err "API: NULL request: EINVAL" "Invalid argument" insmod $CONS mode=null
    expect_err "API: negative timeout: EINVAL" "Invalid argument" insmod $CONS input=$IN1 timeout_ms=-1
    expect_err "API: batch above max_batch ($maxb): EINVAL" "Invalid argument" insmod $CONS mode=batch batch=$((maxb + 1))
    expect_err "API: size mismatch in production: EINVAL" "Invalid argument" insmod $CONS mode=production in_size=3
    echo "== kernel API: a timeout that fires (daemon stopped)"
    host stop-daemon
    expect_err "API: timeout_ms=300: ETIMEDOUT" "timed out" insmod $CONS input=$IN1 timeout_ms=300
    mkreq $RQ 1 $in_w 300 $q1 >/tmp/req300
    expect_err "/dev: header timeout_ms=300: ETIMEDOUT" "timed out" devwrite /tmp/req300
    host cont-daemon
    ms=$(dmesg | grep 'nn_consumer: mode=api calls=1 rc=-110' | tail -n 1 | sed 's/.* after \([0-9]*\) ms/\1/')
    expect_eq "API: the timeout bounded the wait (${ms} ms)" "$([ "${ms:-0}" -ge 250 ] && [ "$ms" -lt 1500 ] && echo yes)" "yes"
    expect_eq "API works again after the late answer" "$(cons input=$IN1)" "$OUT1"
    echo "== kernel API: rmmod virtio_nn while a user runs requests"
    insmod $CONS input=$IN1 count=100 >/tmp/cons.out 2>&1 &
    sleep 0.3
    expect_err "rmmod virtio_nn refused while nn_consumer uses it" "in use\|busy\|Resource" rmmod virtio_nn
    wait
    expect_eq "the user's 100 requests succeeded" "$(cat /sys/module/nn_consumer/parameters/last_output)" "$OUT1"
    rmmod nn_consumer
fi
if [ -e $BENCH ]; then
    echo "== kernel benchmark (nn_bench.ko, short)"
    # shellcheck disable=SC2086 # BENCH_ARGS holds several parameters
    insmod $BENCH ${BENCH_ARGS:-iterations=30 batch=16 threads=$QUEUES}
    expect_eq "nn_bench rc" "$?" "0"
    rmmod nn_bench
    dmesg | grep 'nn_bench:' | tail -n 4
    expect_eq "nn_bench ran the null requests (neural_api_null)" \
        "$(dmesg | grep -c 'nn_bench: null-\(single\|batch\): .* predictions/s')" "2"
fi

echo "== result cache"
echo 1000 >$CPARAM
h0=$(kv $PERF 'Cache hits')
r0=$(kv $PERF requests)
echo "$Q1_IN" >$Q
echo "$Q1_IN" >$Q
expect_eq "an identical prediction within cache_ms is a cache hit" "$(($(kv $PERF 'Cache hits') - h0)) $(($(kv $PERF requests) - r0))" "1 1"
expect_eq "the cached answer" "$(cat $Q)" "$Q1_OUT"
expect_eq "cache_entries" "$(kv $PERF cache_entries)" "1"
h0=$(kv $PERF 'Cache hits')
r0=$(kv $PERF requests)
as alice "echo '$Q1_IN' >$Q"
expect_eq "cache entries are per uid: another uid's same inputs are a miss" "$(($(kv $PERF 'Cache hits') - h0)) $(($(kv $PERF requests) - r0))" "0 1"
echo "$QX_IN" >$Q
echo 2 >/proc/sys/vm/drop_caches
expect_eq "memory pressure (drop_caches): the shrinker empties the cache" "$(kv $PERF cache_entries)" "0"
echo 100 >$CPARAM
echo "$Q1_IN" >$Q
sleep 0.3
echo 500 >$PARAM
host stop-daemon
f0=$(kv $PERF cache_fallbacks)
echo "$Q1_IN" >$Q
expect_eq "timeout: the expired cached answer is the fallback" "$(cat $Q) $(($(kv $PERF cache_fallbacks) - f0))" "$Q1_OUT 1"
expect_err "timeout without a cached answer: ETIMEDOUT" "Connection timed out" wr $Q "$QX_IN"
host cont-daemon
echo 600 >/sys/module/virtio_nn/parameters/cache_fallback_ms
echo "$Q1_IN" >$Q
sleep 1
host stop-daemon
expect_err "timeout: no fallback older than cache_fallback_ms (600)" "Connection timed out" wr $Q "$Q1_IN"
host cont-daemon
echo 30000 >/sys/module/virtio_nn/parameters/cache_fallback_ms
echo 5000 >$PARAM
echo 0 >$CPARAM

if [ -n "$VQ_SIZE" ]; then
    echo "== more requests than the queue holds (vq size $VQ_SIZE)"
    echo 30000 >$PARAM
    host stop-daemon
    e0=$(kv $PERF Errors)
    n=$((VQ_SIZE + 3))
    i=0
    while [ $i -lt $n ]; do
        sh -c "exec 3<>$Q; echo '$Q1_IN' >&3; cat <&3" >/tmp/full.$i 2>&1 &
        i=$((i + 1))
    done
    sleep 2
    # One more writer, waiting for room, gets a signal that it handles: only
    # a fatal signal may end that wait (no EINTR, no failed request).
    sh -c "trap 'echo caught' USR1; exec 3<>$Q; echo '$Q1_IN' >&3; cat <&3" >/tmp/sig 2>&1 &
    spid=$!
    sleep 1
    kill -USR1 $spid
    sleep 0.5
    host cont-daemon
    wait
    expect_eq "$n predictions through a full queue" "$(cat /tmp/full.* | grep -cx -- "$Q1_OUT")" "$n"
    expect_eq "a handled signal does not end the wait for room (answer, signal seen, errors)" \
        "$(grep -cx -- "$Q1_OUT" /tmp/sig) $(grep -c caught /tmp/sig) $(($(kv $PERF Errors) - e0))" "1 1 0"
    cat /tmp/sig
    echo 5000 >$PARAM
fi

echo "== isolation between users: abandoned requests (orphans)"
mkreq $RQ 1 $in_w 1 $q1 >/tmp/req1ms
mkreq $RQ 1 $in_w 200 $q1 >/tmp/req200
chmod 644 /tmp/req1ms /tmp/req1
echo "$Q1_IN" >$Q
expect_eq "the device answers (active)" "$(kv $INFO Status)" "active"
host stop-daemon
cat >/tmp/orphans.sh <<EOF
i=0
while [ \$i -lt 12 ]; do
    sh -c "exec 3<>$DEV; dd if=/tmp/req1ms bs=1M >&3" 2>&1 | grep -o 'timed out\|temporarily unavailable'
    i=\$((i + 1))
done
EOF
out=$(as bob "sh /tmp/orphans.sh" | sort | uniq -c | sed 's/^ *//' | tr '\n' ',')
if [ -z "$VQ_SIZE" ] || [ "$VQ_SIZE" -ge 16 ]; then
    expect_eq "12 requests of 1 ms: 8 orphans, then EAGAIN" "$out" "4 temporarily unavailable,8 timed out,"
fi
expect_eq "short timeouts do not mark the device unresponsive" "$(kv $INFO Status)" "active"
expect_err "another uid is not refused (ETIMEDOUT)" "timed out" devwrite /tmp/req200
host cont-daemon
n=0
while [ $n -lt 30 ] && [ "$(kv $PERF orphans)" != 0 ]; do sleep 0.1; n=$((n + 1)); done
expect_eq "late answers end the orphans" "$(kv $PERF orphans)" "0"
expect_eq "the uid is served again" "$(devrun_as bob /tmp/req1)" "$RS 1 $out_w $(kv $INFO Generation) $q1out"

echo "== model hot-swap (daemon admin socket), with the result cache on"
echo 1000 >$CPARAM
echo "$Q1_IN" >$Q
host swap-b
if [ -n "$EVENTS" ]; then
    n=0
    while [ $n -lt 20 ] && [ "$(kv $INFO Generation)" != 2 ]; do sleep 0.1; n=$((n + 1)); done
    echo "    model_info saw the swap after $n x 100 ms"
    expect_eq "event queue: model_info sees the swap within 2 s" "$(kv $INFO Model) $(kv $INFO Generation)" "$B_MODEL 2"
fi
echo "$Q1_IN" >$Q
expect_eq "answer of the swapped-in model (wider output)" "$(cat $Q)" "$B_OUT"
expect_eq "model_info after swap" "$(kv $INFO Model) $(kv $INFO Generation)" "$B_MODEL 2"
host swap-c
expect_err "old input width after swap: EINVAL" "Invalid argument" wr $Q "$Q1_IN"
echo "$C_IN" >$Q
expect_eq "answer of a model with another input width" "$(cat $Q)" "$C_OUT"
host swap-a
echo "$IN1" >$P
expect_eq "back to the first model" "$(cat $P)" "$OUT1"

echo "== big requests: batches whose buffers span many pages (model $W_MODEL)"
MAXREQ=/sys/module/virtio_nn/parameters/max_request_kib
expect_eq "max_request_kib default (0: the protocol's largest request)" "$(cat $MAXREQ)" "0"
host swap-w
n=0
while [ $n -lt 50 ] && [ "$(kv $INFO Model)" != "$W_MODEL" ]; do sleep 0.1; n=$((n + 1)); done
w_out=${W_MODEL##*x}
w_gen=$(kv $INFO Generation)
expect_eq "the wide model is loaded (max_batch 4096)" "$(kv $INFO Model) $(kv $INFO 'Max batch')" "$W_MODEL 4096"
# 40 samples: 10 KiB in, 80 KiB out (page-sized chunks on a ring of 64)
devraw /etc/nn-wide-40.req >/tmp/wide.out
expect_eq "40 samples: the answer's header" "$(words </tmp/wide.out)" "$RS 40 $w_out $w_gen"
expect_eq "40 samples: outputs bit for bit (md5 of nn-model predict's)" \
    "$(tail -c +17 /tmp/wide.out | md5sum | cut -d' ' -f1)" "$W_MD5_40"
# 4096 samples: 1 MiB in, 8 MiB out. A ring of 2 or 3 descriptors cannot
# carry it in chunks of at most 4 MiB: E2BIG, at once.
if [ -n "$VQ_SIZE" ] && [ "$VQ_SIZE" -lt 4 ]; then
    expect_err "4096 samples on a ring of $VQ_SIZE: more descriptors than the ring: E2BIG" \
        "Argument list too long" devwrite /etc/nn-wide-4096.req
else
    devraw /etc/nn-wide-4096.req >/tmp/wide.out
    expect_eq "4096 samples (9 MiB of buffers): the answer's header" "$(words </tmp/wide.out)" "$RS 4096 $w_out $w_gen"
    expect_eq "4096 samples: outputs bit for bit (md5 of nn-model predict's)" \
        "$(tail -c +17 /tmp/wide.out | md5sum | cut -d' ' -f1)" "$W_MD5_4096"
fi
rm -f /tmp/wide.out
echo 1024 >$MAXREQ
expect_err "a request above max_request_kib (1024): E2BIG" "Argument list too long" devwrite /etc/nn-wide-4096.req
expect_eq "a request below max_request_kib is served" "$(devraw /etc/nn-wide-40.req | tail -c +17 | md5sum | cut -d' ' -f1)" "$W_MD5_40"
echo 0 >$MAXREQ
expect_eq "no warning or bug in the kernel log after the big requests" "$(kernel_log_verdict)" "clean"
host swap-a
echo "$IN1" >$P
expect_eq "back to the first model after the wide one" "$(cat $P)" "$OUT1"

echo 0 >$CPARAM
echo "== timeout (the daemon is stopped), then a late answer"
echo 1000 >$PARAM
host stop-daemon
t0=$(date +%s)
expect_err "no answer: ETIMEDOUT" "Connection timed out" wr $P "$IN1"
t1=$(date +%s)
host cont-daemon
sleep 1
echo "$IN1" >$P
expect_eq "works again after the late answer" "$(cat $P)" "$OUT1"
echo "    timeout took $((t1 - t0)) s"
echo 5000 >$PARAM

echo "== the CPU fallback: the driver's copy of the model answers when the device does not"
echo 1048576 >$FB
gen=$(kv $INFO Generation)
n=0
while [ $n -lt 100 ] && ! dmesg | grep -q "CPU fallback: copy of generation $gen "; do sleep 0.1; n=$((n + 1)); done
expect_eq "the copy of generation $gen is fetched (GET_MODEL)" "$(dmesg | grep -c "CPU fallback: copy of generation $gen ")" "1"
RD=$DEV_DEVICE_ONLY_MAGIC RF=$DEV_FALLBACK_MAGIC
mkreq $RD 1 $in_w 0 $q1 >/tmp/reqd
expect_eq "/dev: NNRD answered by the device (NNRS)" "$(devrun /tmp/reqd)" "$RS 1 $out_w $gen $q1out"
echo 1000 >$PARAM
fa0=$(kv $PERF fallback_answers)
host stop-daemon
echo "$Q1_IN" >$Q
expect_eq "timeout: the fallback answers, bit for bit" "$(cat $Q)" "$Q1_OUT"
expect_eq "model_info: Status: fallback" "$(kv $INFO Status)" "fallback"
echo "$QX_IN" >$Q
expect_eq "the fallback: extreme Q16.16 inputs, bit for bit" "$(cat $Q)" "$QX_OUT"
echo "$WX_IN" >$P
expect_eq "the fallback: /proc whole numbers" "$(cat $P)" "$WX_OUT"
expect_eq "/dev: the fallback's answer is marked (NNRF) with the copy's generation" "$(devrun /tmp/req3)" "$RF 3 $out_w $gen $q1out $q1out $q1out"
expect_err "/dev: NNRD is never answered by the fallback (ETIMEDOUT)" "timed out" devwrite /tmp/reqd
if [ -e $CONS ]; then
    expect_eq "API: neural_api_predict answered by the fallback" "$(cons input=$IN1)" "$OUT1"
    expect_eq "API: neural_api_predict_ex, 8 rows: fallback flag and generation" \
        "$(insmod $CONS mode=ex batch=8 count=3 input=$IN1 && cat /sys/module/nn_consumer/parameters/last_output /sys/module/nn_consumer/parameters/fallback_answers /sys/module/nn_consumer/parameters/last_generation | tr '\n' ' '; rmmod nn_consumer)" \
        "$OUT1;$OUT1;$OUT1;$OUT1;$OUT1;$OUT1;$OUT1;$OUT1 3 $gen "
    expect_err "API: NEURAL_API_NO_FALLBACK: ETIMEDOUT" "timed out" insmod $CONS mode=ex nofallback=1 input=$IN1 timeout_ms=300
fi
expect_err "the fallback checks the width (EINVAL)" "Invalid argument" wr $Q "1,2"
expect_eq "performance: fallback_answers counted" "$([ $(($(kv $PERF fallback_answers) - fa0)) -ge 6 ] && echo yes)" "yes"
host cont-daemon
n=0
while [ $n -lt 50 ] && [ "$(kv $INFO Status)" != active ]; do sleep 0.1; n=$((n + 1)); done
expect_eq "model_info: active again after the late answers" "$(kv $INFO Status)" "active"
echo "$Q1_IN" >$Q
fa1=$(kv $PERF fallback_answers)
expect_eq "the device answers again (not the fallback)" "$(cat $Q) $(($(kv $PERF fallback_answers) - fa1))" "$Q1_OUT 0"
echo 5000 >$PARAM
echo 0 >$FB

echo "== rmmod while requests are in flight"
i=0
while [ $i -lt 4 ]; do
    sh -c "n=0; while [ \$n -lt 200 ]; do echo '$Q1_IN' >$Q 2>/dev/null || exit 0; n=\$((n + 1)); done" &
    i=$((i + 1))
done
sleep 1
rmmod virtio_nn
expect_eq "rmmod rc" "$?" "0"
wait
expect_eq "proc entries gone" "$(ls /proc/neural_network 2>&1 | grep -c 'No such file')" "1"
insmod /lib/modules/virtio_nn.ko cache_ms=0 fallback_max_bytes=0
expect_eq "insmod again rc" "$?" "0"
expect_eq "model_info after reload" "$(head -n 2 $INFO | tr '\n' ' ')" "Model: $MODEL Status: active "
echo "$IN1" >$P
expect_eq "predict after reload" "$(cat $P)" "$OUT1"

echo "== system sleep: freeze/restore with a request in flight"
# virtio-pci resets the device on resume; the driver's freeze/restore set its
# queues up again. pm_test "devices": `echo freeze` runs the devices' suspend
# callbacks, waits pm_test_delay s and resumes them (no wake-up source needed:
# the guest has no ACPI).
if [ -e /sys/power/pm_test ] && grep -qw freeze /sys/power/state; then
    echo devices >/sys/power/pm_test
    echo 1 >/sys/module/suspend/parameters/pm_test_delay
    echo 2000 >$PARAM
    echo "$Q1_IN" >$Q
    expect_eq "before sleep" "$(cat $Q)" "$Q1_OUT"
    # An orphan (its waiter timed out) that the device holds at freeze.
    host stop-daemon
    echo 300 >$PARAM
    expect_err "sleep: a request the device holds (orphan)" "timed out" wr $Q "$QX_IN"
    expect_eq "sleep: one orphan before freeze" "$(kv $PERF orphans)" "1"
    echo 2000 >$PARAM
    # The reset waits for the stopped daemon (vhost-user): it goes on in 3 s.
    host cont-daemon-in-3s
    echo freeze >/sys/power/state
    expect_eq "sleep: echo freeze rc" "$?" "0"
    expect_eq "sleep: the driver froze with the request in flight and restored" \
        "$(dmesg | grep -c 'frozen (1 requests in flight') $(dmesg | grep -c 'virtio[0-9]*: restored')" "1 1"
    expect_eq "sleep: no orphan left after resume" "$(kv $PERF orphans)" "0"
    # write and read on one open file: a failed write shows, no older answer
    expect_eq "sleep: answers bit-exact after resume" \
        "$(sh -c "exec 3<>$Q; echo '$Q1_IN' >&3 && cat <&3" 2>&1)" "$Q1_OUT"
    expect_eq "sleep: answers bit-exact after resume (extremes)" \
        "$(sh -c "exec 3<>$Q; echo '$QX_IN' >&3 && cat <&3" 2>&1)" "$QX_OUT"
    expect_eq "sleep: /dev after resume" "$(devrun /tmp/req1)" "$RS 1 $out_w $(kv $INFO Generation) $q1out"
    expect_eq "sleep: model_info after resume" "$(head -n 2 $INFO | tr '\n' ' ')" "Model: $MODEL Status: active "
    echo 1 >$HEALTH
    expect_eq "sleep: health check after resume" "$(kv $HEALTH status) $(kv $HEALTH last_result)" "ok 0"
    # Sleep while a process keeps predicting: each answer exact.
    sh -c "n=0; while [ \$n -lt 40 ]; do sh -c \"exec 3<>$Q; echo '$Q1_IN' >&3 && cat <&3\"; n=\$((n + 1)); done" >/tmp/sleep.out 2>&1 &
    sleep 0.5
    echo freeze >/sys/power/state
    expect_eq "sleep again: echo freeze rc" "$?" "0"
    wait
    expect_eq "sleep while predicting: 40 exact answers" "$(grep -cx -- "$Q1_OUT" /tmp/sleep.out) $(wc -l </tmp/sleep.out)" "40 40"
    expect_eq "sleep: two restores" "$(dmesg | grep -c 'virtio[0-9]*: restored')" "2"
    echo none >/sys/power/pm_test
    echo 5000 >$PARAM
else
    bad "sleep: no freeze in /sys/power/state or no /sys/power/pm_test (kernel without SUSPEND/PM_DEBUG, see scripts/build-kernel.sh)"
fi

echo "== rmmod with a request the device has not answered"
echo 0 >$PARAM
host stop-daemon
(echo "$IN1" >$P) >/tmp/inflight 2>&1 &
sleep 1
host cont-daemon-in-3s
rmmod virtio_nn
expect_eq "rmmod rc" "$?" "0"
wait
expect_eq "waiter got ENODEV" "$(cat /tmp/inflight)" "sh: write error: No such device"
dmesg | grep "requests in flight"
insmod /lib/modules/virtio_nn.ko cache_ms=0 fallback_max_bytes=0 health_interval_ms=300
expect_eq "insmod again rc" "$?" "0"
echo "$IN1" >$P
expect_eq "predict after reload" "$(cat $P)" "$OUT1"

echo "== unplug/replug with the module loaded"
host unplug
expect_eq "model_info without device" "$(sed -n 2p $INFO)" "Status: no device"
expect_err "write without device: ENODEV" "No such device" wr $P "$IN1"
expect_err "/dev without device: ENODEV" "No such device" devwrite /tmp/req1
if [ -e $CONS ]; then
    expect_err "API without device: ENODEV" "No such device" insmod $CONS input=$IN1
fi
expect_eq "session answer survives unplug" "$(cat $P)" "$OUT1"
sleep 0.8
expect_eq "periodic health check (300 ms): failing without a device" "$(kv $HEALTH status) $(kv $HEALTH device) $(kv $HEALTH last_result)" "failing no device -19"
expect_eq "health: consecutive errors counted" "$([ "$(kv $HEALTH consecutive_errors)" -ge 2 ] && echo yes)" "yes"
host replug
n=0
while [ $n -lt 100 ] && ! grep -q "Status: active" $INFO; do sleep 0.1; n=$((n + 1)); done
echo "$Q1_IN" >$Q
expect_eq "predict after replug" "$(cat $Q)" "$Q1_OUT"
sed -n 4p $INFO
n=0
while [ $n -lt 30 ] && [ "$(kv $HEALTH status)" != ok ]; do sleep 0.1; n=$((n + 1)); done
expect_eq "health: ok again after replug" "$(kv $HEALTH status) $(kv $HEALTH consecutive_errors)" "ok 0"
cat $HEALTH | tr '\n' ' '; echo
expect_eq "health: changes logged" "$(dmesg | grep 'health check:' | tail -n 2 | sed 's/.*health check: //' | tr '\n' ' ')" "failing (-19) ok "

echo "== cached answers do not outlive the device"
echo 60000 >$CPARAM
echo "$Q1_IN" >$Q
host unplug
host replug-b
n=0
while [ $n -lt 100 ] && ! grep -q "Status: active" $INFO; do sleep 0.1; n=$((n + 1)); done
echo "$Q1_IN" >$Q
expect_eq "after a replug with other weights (generation 1 again): the new model's answer" "$(cat $Q)" "$B_OUT"
echo 0 >$CPARAM
host swap-a

echo "== rmmod while a file is open"
out=$(sh -c "exec 3<>$P; echo '$IN1' >&3; rmmod virtio_nn; echo rmmod=\$?; cat <&3; echo cat=\$?" 2>&1 | tr '\n' ' ')
expect_eq "rmmod with an open file, then its read fails" "$out" "rmmod=0 cat: read error: Input/output error cat=1 "
insmod /lib/modules/virtio_nn.ko cache_ms=0 fallback_max_bytes=0
expect_eq "insmod again rc" "$?" "0"

echo "== /dev/neural_network: dev_mode, dev_gid"
rmmod virtio_nn
insmod /lib/modules/virtio_nn.ko cache_ms=0 fallback_max_bytes=0 dev_mode=0600 || insmod /lib/modules/virtio_nn.ko cache_ms=0 fallback_max_bytes=0
expect_eq "dev_mode=0600" "$(ls -l $DEV | cut -c1-10)" "crw-------"
rmmod virtio_nn
insmod /lib/modules/virtio_nn.ko cache_ms=0 fallback_max_bytes=0 dev_gid=1234 || insmod /lib/modules/virtio_nn.ko cache_ms=0 fallback_max_bytes=0
expect_eq "dev_gid: a member of the group is served" "$(devrun_as bob /tmp/req1)" "$RS 1 $out_w $(kv $INFO Generation) $q1out"
expect_err "dev_gid: another uid cannot open it (EACCES)" "Permission denied" as alice "exec 3<>$DEV"
rmmod virtio_nn
insmod /lib/modules/virtio_nn.ko cache_ms=0 fallback_max_bytes=0
expect_eq "insmod again rc" "$?" "0"

echo "== idle rmmod and kernel log"
rmmod virtio_nn
expect_eq "idle rmmod rc" "$?" "0"
# The runner judges the kernel log (nnlib.bad_log_lines: the one list of bad
# lines, tests/kernel-log-bad.txt, and its one exception, the kernel's own
# pciehp lockdep report on hot-unplug) and answers "clean" or what it found.
echo "@@HOST:kernel-log"
dmesg
echo "@@KERNEL-LOG-END"
read -r verdict
expect_eq "no bug reported in the kernel log" "$verdict" "clean"
dmesg | grep virtio_nn | tail -n 8
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
if [ -e /sys/kernel/debug/kmemleak ]; then
    # kmemleak (debug kernels): objects unreferenced for 5 s are reported.
    sleep 6
    echo scan >/sys/kernel/debug/kmemleak
    sleep 6
    echo scan >/sys/kernel/debug/kmemleak
    leaks=$(grep -c virtio_nn /sys/kernel/debug/kmemleak)
    expect_eq "kmemleak: no leak from virtio_nn" "$leaks" "0"
    echo "    kmemleak reports $(grep -c unreferenced /sys/kernel/debug/kmemleak) objects in all"
fi

if [ $fails -eq 0 ]; then echo "GUEST-TEST: PASS"; else echo "GUEST-TEST: FAIL ($fails)"; fi
