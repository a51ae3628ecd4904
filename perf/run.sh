#!/usr/bin/env bash
# Side-by-side benchmark: r3fs figures next to raw fio on the same disk, in one run, written as
# the "Side by side" table of docs/benchmarks.md (between its BEGIN/END markers).
#
#   perf/run.sh                      # everything that exists in this build
#   SIZE_MIB=512 RAND_SECONDS=5 perf/run.sh   # smaller and quicker
#
# Steps (each figure's command is printed into the document):
#  1. release builds: r3fs-bench, the chunk store and storage daemon benchmarks, the r3fs CLI;
#  2. raw fio baselines on $BENCH_DIR: 4 MiB sequential write and read at queue depth $SEQ_QD,
#     4 KiB random reads at $RAND_QD (io_uring, O_DIRECT), the denominators of every ratio;
#  3. r3fs-bench with the same options on the same directory (io_uring, then psync): the
#     harness itself next to fio, so a ratio below 1 elsewhere is r3fs's, not the harness's;
#  4. the chunk store next to fio (engine/r3fs-chunk/examples/chunkbench.rs, which runs its own
#     fio in the same process run: its ratios use that fio);
#  5. the storage daemon's data path next to fio (engine/r3fs-storage/examples/datapath_bench.rs);
#  6. if `r3fs up` exists: a local cluster (replication $REPLICATION) with a FUSE mount on the
#     same disk, then the seed's workloads scaled to this machine: $RING_JOBS jobs x 4 MiB
#     sequential writes (and reads) through the native ring engine, 4 KiB random reads through
#     the native ring engine at $RAND_QD, and 2 jobs of libaio 4 MiB direct writes through the
#     mount with real fio;
#     then the FUSE workload again on a cluster whose chunks are $FUSE_CHUNK_BYTES (the kernel's
#     largest FUSE write; FUSE_CHUNK_BYTES=0 skips it);
#  7. the same ring workloads on a second cluster with replication $REPLICATION3 (every replica on
#     this one disk: its ratio divides by raw fio / $REPLICATION3); REPLICATION3=0 skips it.
# Every row notes the 1-minute load average when it was measured (other work shares the cores).
# Whatever is not available yet is listed as pending in the table, with the reason.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/r3fs-side-by-side}
SIZE_MIB=${SIZE_MIB:-1024}
SEQ_QD=${SEQ_QD:-8}
RAND_QD=${RAND_QD:-32}
RAND_SECONDS=${RAND_SECONDS:-10}
RING_JOBS=${RING_JOBS:-16}
REPLICATION=${REPLICATION:-1}
REPLICATION3=${REPLICATION3:-3}
FUSE_CHUNK_BYTES=${FUSE_CHUNK_BYTES:-1048576}
CHUNK_BYTES=${CHUNK_BYTES:-4194304}
DOC=${DOC:-$ROOT/docs/benchmarks.md}
LOGS=$BENCH_DIR/logs
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/release

mkdir -p "$BENCH_DIR" "$LOGS"
ROWS=$LOGS/rows.md
NOTES=$LOGS/notes.md
: >"$ROWS"
: >"$NOTES"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')

say() { echo "== $*" >&2; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }'; }
mib() { awk -v x="$1" 'BEGIN { printf "%.0f", x / 1048576 }'; }
num() { awk -v x="$1" 'BEGIN { printf "%.0f", x }'; }
load1() { cut -d' ' -f1 /proc/loadavg; }
# row WORKLOAD FIGURE UNIT BASELINE TARGET COMMAND [COMMAND-LABEL]
row() {
  printf '| %s | %s %s | %s %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" "$3" "$(ratio "$2" "$4")" "$5" "$(load1)" >>"$ROWS"
  grep -qF -- "\`$6\`" "$NOTES" || printf -- '- %s: `%s`\n' "${7:-$1}" "$6" >>"$NOTES"
}
pending() { printf '| %s | pending | | | %s | %s |\n' "$1" "$2" "$(load1)" >>"$ROWS"; }

# fio_json FILE DIRECTION FIELD: a number from fio's (or r3fs-bench's) JSON report, first job.
fio_json() { jq -r ".jobs[0].$2.$3" "$1"; }

say "build (release)"
(cd "$ROOT" && cargo build --release -p r3fs-bench \
  && cargo build --release -p r3fs-chunk --example chunkbench \
  && cargo build --release -p r3fs-storage --example datapath_bench) >"$LOGS/build.log" 2>&1 \
  || { cat "$LOGS/build.log" >&2; exit 1; }
R3FS_UP=no
if (cd "$ROOT" && cargo build --release -p r3fs >>"$LOGS/build.log" 2>&1) \
  && "$TARGET/r3fs" up --help >/dev/null 2>&1; then
  # `r3fs up` runs the daemons that sit next to it in the target directory.
  if (cd "$ROOT" && cargo build --release -p r3fs-mgmtd -p r3fs-meta -p r3fs-storage -p r3fs-fuse --bins) \
    >>"$LOGS/build.log" 2>&1; then
    R3FS_UP=yes
  else
    R3FS_UP="daemon build failed (see $LOGS/build.log)"
  fi
fi

# --- 2. raw fio baselines -------------------------------------------------------------------
RAW=$BENCH_DIR/raw
rm -rf "$RAW" && mkdir -p "$RAW"
FIO_COMMON="--directory=$RAW --ioengine=io_uring --direct=1 --output-format=json"
FIO_SEQW="fio --name=seq --rw=write --bs=4M --size=${SIZE_MIB}M --iodepth=$SEQ_QD --end_fsync=1 $FIO_COMMON"
FIO_SEQR="fio --name=seq --rw=read --bs=4M --size=${SIZE_MIB}M --iodepth=$SEQ_QD $FIO_COMMON"
FIO_RAND="fio --name=seq --rw=randread --bs=4k --size=${SIZE_MIB}M --iodepth=$RAND_QD --runtime=$RAND_SECONDS --time_based $FIO_COMMON"
say "raw fio: $FIO_SEQW"
$FIO_SEQW >"$LOGS/fio-seqwrite.json"
$FIO_SEQR >"$LOGS/fio-seqread.json"
$FIO_RAND >"$LOGS/fio-randread.json"
RAW_W=$(fio_json "$LOGS/fio-seqwrite.json" write bw_bytes)
RAW_R=$(fio_json "$LOGS/fio-seqread.json" read bw_bytes)
RAW_IOPS=$(fio_json "$LOGS/fio-randread.json" read iops)
row "raw fio: 4 MiB seq write, QD $SEQ_QD, end_fsync" "$(mib "$RAW_W")" MiB/s "$(mib "$RAW_W")" "(baseline)" "$FIO_SEQW"
row "raw fio: 4 MiB seq read, QD $SEQ_QD" "$(mib "$RAW_R")" MiB/s "$(mib "$RAW_R")" "(baseline)" "$FIO_SEQR"
row "raw fio: 4 KiB random read, QD $RAND_QD, ${RAND_SECONDS}s" "$(num "$RAW_IOPS")" IOPS "$(num "$RAW_IOPS")" "(baseline)" "$FIO_RAND"
rm -rf "$RAW" # every step removes its data: the disk is shared and may be nearly full

# --- 3. the harness next to fio ---------------------------------------------------------------
BENCH=$TARGET/r3fs-bench
for engine in io_uring psync; do
  HDIR=$BENCH_DIR/harness-$engine
  rm -rf "$HDIR" && mkdir -p "$HDIR"
  COMMON="--directory=$HDIR --ioengine=$engine --direct=1 --output-format=json --eta=never"
  W="r3fs-bench --name=seq --rw=write --bs=4M --size=${SIZE_MIB}M --iodepth=$SEQ_QD --end_fsync=1 $COMMON"
  R="r3fs-bench --name=seq --rw=read --bs=4M --size=${SIZE_MIB}M --iodepth=$SEQ_QD $COMMON"
  X="r3fs-bench --name=seq --rw=randread --bs=4k --size=${SIZE_MIB}M --iodepth=$RAND_QD --runtime=$RAND_SECONDS --time_based $COMMON"
  say "harness: $W"
  "$TARGET"/$W >"$LOGS/bench-$engine-seqwrite.json"
  "$TARGET"/$R >"$LOGS/bench-$engine-seqread.json"
  "$TARGET"/$X >"$LOGS/bench-$engine-randread.json"
  depth=$([ $engine = psync ] && echo "1 (psync)" || echo "$SEQ_QD")
  row "r3fs-bench $engine, local disk: 4 MiB seq write" "$(mib "$(fio_json "$LOGS/bench-$engine-seqwrite.json" write bw_bytes)")" MiB/s "$(mib "$RAW_W")" "harness check, QD $depth" "$W"
  row "r3fs-bench $engine, local disk: 4 MiB seq read" "$(mib "$(fio_json "$LOGS/bench-$engine-seqread.json" read bw_bytes)")" MiB/s "$(mib "$RAW_R")" "harness check, QD $depth" "$R"
  row "r3fs-bench $engine, local disk: 4 KiB random read" "$(num "$(fio_json "$LOGS/bench-$engine-randread.json" read iops)")" IOPS "$(num "$RAW_IOPS")" "harness check" "$X"
  rm -rf "$HDIR"
done

# --- 4. chunk store --------------------------------------------------------------------------
CHUNK="cargo run --release -p r3fs-chunk --example chunkbench -- --dir $BENCH_DIR/chunk --size-mib $SIZE_MIB --seq-qd $SEQ_QD --rand-qd $RAND_QD --rand-seconds $RAND_SECONDS --reps 1"
say "chunk store: $CHUNK"
rm -rf "$BENCH_DIR/chunk"
if (cd "$ROOT" && $CHUNK) >"$LOGS/chunkbench.txt" 2>"$LOGS/chunkbench.err"; then
  # Table lines end "<store> <fio> <ratio>% <target>% <unit>"; the name before them has spaces.
  while IFS='|' read -r name figure baseline unit target; do
    qd=$SEQ_QD; [ "$unit" = IOPS ] && qd=$RAND_QD
    row "chunk store: $name, QD $qd (vs its own fio run)" "$figure" "$unit" "$baseline" ">= $target of fio" "$CHUNK" "chunk store and its fio"
  done < <(awk '/(MiB\/s|IOPS)$/ && NF >= 6 {
      name = $1; for (i = 2; i <= NF - 5; i++) name = name " " $i
      if (name ~ /^vs /) name = prev " " name; else prev = name
      print name "|" $(NF-4) "|" $(NF-3) "|" $NF "|" $(NF-1) }' "$LOGS/chunkbench.txt")
  rm -rf "$BENCH_DIR/chunk"
else
  pending "chunk store (chunkbench)" "failed: see $LOGS/chunkbench.err"
fi

# --- 5. storage daemon data path ---------------------------------------------------------------
DATAPATH="cargo run --release -p r3fs-storage --example datapath_bench -- --dir $BENCH_DIR/datapath --total-mib $SIZE_MIB --depth 4"
say "storage daemon: $DATAPATH"
rm -rf "$BENCH_DIR/datapath"
if (cd "$ROOT" && $DATAPATH) >"$LOGS/datapath.txt" 2>"$LOGS/datapath.err"; then
  while IFS='|' read -r _ name ours theirs _; do
    row "storage daemon, replication 1, 4 MiB seq $(echo $name), depth 4 (vs its own fio run)" "$(echo $ours)" MiB/s "$(echo $theirs)" "-" "$DATAPATH" "storage daemon and its fio"
  done < <(grep -E '^\| (write|read) \|' "$LOGS/datapath.txt")
  rm -rf "$BENCH_DIR/datapath"
else
  pending "storage daemon data path (datapath_bench)" "failed: see $LOGS/datapath.err"
fi

# --- 6./7. clusters: seed workloads through the native ring and the mount ---------------------
# start_cluster REPLICATION NAME [CHUNK-BYTES]: `r3fs up` with a FUSE mount on $BENCH_DIR/NAME-mnt;
# sets UP_PID, MOUNT and UP (the command); fails if it does not print its readiness line.
UP_PID=
stop_cluster() {
  if [ -n "$UP_PID" ]; then
    kill -TERM "$UP_PID" 2>/dev/null || true
    wait "$UP_PID" 2>/dev/null || true
    UP_PID=
  fi
}
trap stop_cluster EXIT
start_cluster() {
  local repl=$1 name=$2 chunk=${3:-$CHUNK_BYTES}
  CLUSTER=$BENCH_DIR/$name
  MOUNT=$BENCH_DIR/$name-mnt
  rm -rf "$CLUSTER" && mkdir -p "$CLUSTER" "$MOUNT"
  UP="r3fs up --data $CLUSTER --mount $MOUNT --replication $repl --chunk-size $chunk"
  say "cluster: $UP"
  "$TARGET"/$UP >"$LOGS/$name-up.log" 2>&1 &
  UP_PID=$!
  for _ in $(seq 1 180); do
    grep -q 'r3fs cluster ready' "$LOGS/$name-up.log" && break
    kill -0 $UP_PID 2>/dev/null || break
    sleep 1
  done
  if grep -q 'r3fs cluster ready' "$LOGS/$name-up.log"; then
    printf -- '- cluster (replication %s, %s-byte chunks): `%s`\n' "$repl" "$chunk" "$UP" >>"$NOTES"
    return 0
  fi
  stop_cluster
  return 1
}
# ring_rows LABEL WRITE-BASELINE WRITE-TARGET READ-BASELINE READ-TARGET [randread]: the native
# ring workloads on the cluster at $MOUNT; sets RING_W.
ring_rows() {
  local label=$1 wbase=$2 wtarget=$3 rbase=$4 rtarget=$5 tag
  tag=$(echo "$label" | tr -c 'a-z0-9\n' '-')
  RING_SIZE=$(( SIZE_MIB / RING_JOBS )); RING_SIZE=$(( RING_SIZE < 4 ? 4 : RING_SIZE / 4 * 4 ))
  local common="--ioengine=r3fs-ring --mountpoint=$MOUNT --directory=$MOUNT/ring --output-format=json --eta=never"
  local w="r3fs-bench --name=ringw --rw=write --bs=4M --size=${RING_SIZE}M --numjobs=$RING_JOBS --iodepth=4 --ior_depth=4 --group_reporting --end_fsync=1 $common"
  local r="r3fs-bench --name=ringw --rw=read --bs=4M --size=${RING_SIZE}M --numjobs=$RING_JOBS --iodepth=4 --ior_depth=4 --group_reporting $common"
  say "native ring ($label): $w"
  "$TARGET"/$w >"$LOGS/ring-$tag-seqwrite.json"
  RING_W=$(fio_json "$LOGS/ring-$tag-seqwrite.json" write bw_bytes)
  row "native ring, $label, $RING_JOBS jobs x 4 MiB seq write" "$(mib "$RING_W")" MiB/s "$wbase" "$wtarget" "$w" "native ring, $RING_JOBS jobs x 4 MiB seq write"
  "$TARGET"/$r >"$LOGS/ring-$tag-seqread.json"
  row "native ring, $label, $RING_JOBS jobs x 4 MiB seq read" "$(mib "$(fio_json "$LOGS/ring-$tag-seqread.json" read bw_bytes)")" MiB/s "$rbase" "$rtarget" "$r" "native ring, $RING_JOBS jobs x 4 MiB seq read"
  if [ "${6:-}" = randread ]; then
    local x="r3fs-bench --name=ringx --rw=randread --bs=4k --size=${SIZE_MIB}M --iodepth=$RAND_QD --ior_depth=$RAND_QD --runtime=$RAND_SECONDS --time_based $common"
    "$TARGET"/$x >"$LOGS/ring-$tag-randread.json"
    row "native ring, $label, 4 KiB random read, QD $RAND_QD" "$(num "$(fio_json "$LOGS/ring-$tag-randread.json" read iops)")" IOPS "$(num "$RAW_IOPS")" ">= 0.50" "$x" "native ring, 4 KiB random read, QD $RAND_QD"
  fi
  rm -rf "$MOUNT/ring"
}

# fuse_rows CHUNK-BYTES: the seed's FUSE workload (real fio, libaio, O_DIRECT) on the mount at
# $MOUNT, whose files have CHUNK-BYTES chunks.
fuse_rows() {
  local chunk=$1 kib=$(( $1 / 1024 ))
  FUSE="fio --name=fuse --directory=$MOUNT/fio --rw=write --bs=4M --size=${SIZE_MIB}M --numjobs=2 --ioengine=libaio --iodepth=$SEQ_QD --direct=1 --group_reporting --end_fsync=1 --output-format=json"
  mkdir -p "$MOUNT/fio"
  say "mount ($kib KiB chunks): $FUSE"
  if $FUSE >"$LOGS/fuse-$kib-seqwrite.json" 2>"$LOGS/fuse-$kib-seqwrite.err"; then
    FUSE_W=$(fio_json "$LOGS/fuse-$kib-seqwrite.json" write bw_bytes)
    row "FUSE mount, replication $REPLICATION, $kib KiB chunks, real fio libaio, 2 jobs x 4 MiB direct write" "$(mib "$FUSE_W")" MiB/s "$(mib "$RAW_W")" ">= 0.60 of native" "$FUSE" "FUSE mount, real fio libaio, 2 jobs x 4 MiB direct write"
    if [ $RING_OK = yes ]; then
      printf '| FUSE (%s KiB chunks) / native ring write (%s KiB chunks) | | | %s | >= 0.60 | |\n' "$kib" "$(( CHUNK_BYTES / 1024 ))" "$(ratio "$FUSE_W" "$RING_W")" >>"$ROWS"
    fi
  else
    pending "FUSE mount, $kib KiB chunks, real fio libaio 2 jobs x 4 MiB direct write" "fio failed: $(head -c 200 "$LOGS/fuse-$kib-seqwrite.err")"
  fi
  rm -rf "$MOUNT/fio"
}

RING_OK=no
if [ "$R3FS_UP" = yes ]; then
  if start_cluster "$REPLICATION" cluster; then
    if "$BENCH" --name=probe --directory="$MOUNT" --size=4M --ioengine=r3fs-ring --mountpoint="$MOUNT" \
        --rw=write --bs=4M --eta=never >"$LOGS/ring-probe.txt" 2>&1; then
      RING_OK=yes
      rm -f "$MOUNT"/probe*
    fi
    if [ $RING_OK = yes ]; then
      ring_rows "replication $REPLICATION" "$(mib "$RAW_W")" ">= 0.80 (repl. 1)" "$(mib "$RAW_R")" ">= 0.80 (repl. 1)" randread
    else
      pending "native ring engine (seed workload 1, 4 KiB random reads)" "r3fs-bench has no r3fs-ring engine in this build: $(head -c 200 "$LOGS/ring-probe.txt")"
    fi
    fuse_rows "$CHUNK_BYTES"
    stop_cluster
    rm -rf "$CLUSTER"
  else
    pending "local cluster (r3fs up, replication $REPLICATION)" "did not print 'r3fs cluster ready': see $LOGS/cluster-up.log"
  fi
  # The kernel sends FUSE writes of at most 1 MiB: with larger chunks every one is a partial-chunk
  # update, and the updates of one chunk are applied one after another by its chain.
  if [ "$FUSE_CHUNK_BYTES" -gt 0 ] && [ "$FUSE_CHUNK_BYTES" != "$CHUNK_BYTES" ]; then
    if start_cluster "$REPLICATION" cluster-fuse "$FUSE_CHUNK_BYTES"; then
      fuse_rows "$FUSE_CHUNK_BYTES"
      stop_cluster
      rm -rf "$CLUSTER"
    else
      pending "local cluster (r3fs up, $FUSE_CHUNK_BYTES-byte chunks)" "did not print 'r3fs cluster ready': see $LOGS/cluster-fuse-up.log"
    fi
  fi
  if [ "$REPLICATION3" -gt 1 ] && [ $RING_OK = yes ]; then
    if start_cluster "$REPLICATION3" cluster-r$REPLICATION3; then
      ring_rows "replication $REPLICATION3" "$(mib "$(awk -v x="$RAW_W" -v n="$REPLICATION3" 'BEGIN { print x / n }')")" ">= 0.80 of raw / $REPLICATION3" "$(mib "$RAW_R")" "- (vs raw read: one replica serves)"
      stop_cluster
      rm -rf "$CLUSTER"
    else
      pending "local cluster (r3fs up, replication $REPLICATION3)" "did not print 'r3fs cluster ready': see $LOGS/cluster-r$REPLICATION3-up.log"
    fi
  fi
else
  why="needs \`r3fs up\` (tools/r3fs)"; [ "$R3FS_UP" = no ] || why="r3fs up: $R3FS_UP"
  pending "seed workload 1: native ring, many jobs x 4 MiB seq write" "$why and the r3fs-ring engine"
  pending "seed workload 2: FUSE mount, real fio libaio, 2 jobs x 4 MiB direct write" "$why"
  pending "native ring, 4 KiB random read, QD $RAND_QD" "$why and the r3fs-ring engine"
fi

LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# --- write the section into docs/benchmarks.md -------------------------------------------------
SECTION=$LOGS/section.md
{
  echo "<!-- BEGIN perf/run.sh: generated by perf/run.sh; edit the script, not this section -->"
  echo "## Side by side (perf/run.sh)"
  echo
  echo "Generated by \`perf/run.sh\` (SIZE_MIB=$SIZE_MIB SEQ_QD=$SEQ_QD RAND_QD=$RAND_QD RAND_SECONDS=$RAND_SECONDS RING_JOBS=$RING_JOBS REPLICATION=$REPLICATION REPLICATION3=$REPLICATION3 CHUNK_BYTES=$CHUNK_BYTES FUSE_CHUNK_BYTES=$FUSE_CHUNK_BYTES) on $STARTED,"
  echo "everything in one run on the same disk ($(df -h "$BENCH_DIR" | awk 'NR==2 {print $1 ", " $2 " " }')file system $(stat -f -c %T "$BENCH_DIR"), $(nproc) cores."
  echo "Load average (1/5/15 min) at start: $LOAD_START; at end: $LOAD_END (other helpers' builds and tests share the cores)."
  echo "Ratios divide by the raw fio row with the same block size and depth, except the chunk store and storage"
  echo "daemon rows, whose benchmarks run their own fio with identical parameters right next to them, and the"
  echo "replication-$REPLICATION3 write row, which divides by raw fio / $REPLICATION3 (every byte reaches the disk $REPLICATION3 times)."
  echo "The load column is the 1-minute load average when the row was measured."
  echo
  echo "| workload | r3fs | raw fio | ratio | target | load |"
  echo "| --- | ---: | ---: | ---: | --- | ---: |"
  cat "$ROWS"
  echo
  echo "Commands (r3fs-bench and r3fs live in target/release):"
  echo
  cat "$NOTES"
  echo "<!-- END perf/run.sh -->"
} >"$SECTION"
if grep -q '^<!-- BEGIN perf/run.sh' "$DOC"; then
  awk -v section="$SECTION" '
    /^<!-- BEGIN perf\/run.sh/ { while ((getline line < section) > 0) print line; skip = 1; next }
    /^<!-- END perf\/run.sh/ { skip = 0; next }
    !skip { print }' "$DOC" >"$DOC.new" && mv "$DOC.new" "$DOC"
else
  { echo; cat "$SECTION"; } >>"$DOC"
fi
cat "$SECTION"
