#!/bin/bash
# textingest sample capture: own tracefs instance, workload, trace text variants.
set -e
OUT=$1; mkdir -p $OUT
I=/sys/kernel/tracing/instances/ti-textingest-$$
mkdir $I
trap "echo 0 > $I/tracing_on; rmdir $I" EXIT
for e in exceptions raw_syscalls sched/sched_switch sched/sched_process_exec sched/sched_process_fork sched/sched_process_exit signal irq_vectors/local_timer_entry irq_vectors/local_timer_exit irq/irq_handler_entry irq/irq_handler_exit nmi; do echo 1 > $I/events/$e/enable; done
echo 1 > $I/options/record-tgid
echo 1 > $I/tracing_on
echo "textingest start" > $I/trace_marker
./workload > $OUT/workload.json
echo "textingest end" > $I/trace_marker
echo 0 > $I/tracing_on
cat $I/trace > $OUT/trace-tgid.txt
echo 0 > $I/options/irq-info; cat $I/trace > $OUT/trace-tgid-noirq.txt
echo 1 > $I/options/irq-info; echo 0 > $I/options/record-tgid
cat $I/trace > $OUT/trace.txt
echo 0 > $I/options/irq-info; cat $I/trace > $OUT/trace-noirq.txt; echo 1 > $I/options/irq-info
# trace_pipe with a tiny ring buffer so that events are lost; the kernel's own overrun counts
echo 0 > $I/events/enable; echo > $I/trace
echo 1 > $I/events/exceptions/enable; echo 1 > $I/events/raw_syscalls/enable
echo 8 > $I/buffer_size_kb
echo 1 > $I/tracing_on
for i in 1 2 3; do ./workload > /dev/null; done
echo 0 > $I/tracing_on
for c in 0 1; do grep -E '^overrun' $I/per_cpu/cpu$c/stats | sed "s/^/cpu$c /"; done > $OUT/pipe-lost.stats
timeout 2 cat $I/trace_pipe > $OUT/trace_pipe-lost.txt || true
