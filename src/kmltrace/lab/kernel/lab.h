/*
 * Constants shared by the lab kernel (kernel.S) and kmltrace.lab.scenarios, which reads this
 * file to know what each scenario must show.  Keep every definition on one line, as
 * "#define NAME EXPRESSION", with integers, earlier names, + - * << | and parentheses only.
 */

/* scenarios: the kernel is built once per scenario with -DSCENARIO=SC_... */
#define SC_STARVATION 1
#define SC_PF_IST 2
#define SC_DF_IST 3
#define SC_REDZONE_NOIST 4
#define SC_REDZONE_IST 5
#define SC_CPL3 6
#define SC_GS_WRITE 7
#define SC_FAULT_LOOP 8

/* segment selectors of the lab GDT */
#define KERNEL_CS 0x08
#define KERNEL_DS 0x10
#define USER_DS 0x1b
#define USER_CS 0x23
#define TSS_SEL 0x28

/* the user-range stack a kernel-mode process runs on, as under KML: one mapped 4 KiB page */
#define USER_STACK_TOP 0x00007ffffffff000
#define USER_STACK_BOTTOM (USER_STACK_TOP - 0x1000)
/* the page below it is not mapped (a guard page, or simply where the stack has not grown yet) */
#define GUARD_PAGE (USER_STACK_BOTTOM - 0x1000)

/* stack starvation: %rsp sits at the lowest mapped byte and the code pushes */
#define STARVE_RSP USER_STACK_BOTTOM
#define STARVE_CR2 (STARVE_RSP - 8)
/* page-fault error codes of that push: write to a non-present page, supervisor / user */
#define STARVE_PF_ERROR 0x2
#define CPL3_PF_ERROR 0x6

/* red zone: %rsp of the code that keeps 128 bytes below it while the timer fires */
#define REDZONE_RSP (USER_STACK_TOP - 0x400)
#define REDZONE_BYTES 128
#define TIMER_VECTOR 0x20
#define TIMER_TICKS 3
#define LAPIC_BASE 0xfee00000
#define LAPIC_TIMER_COUNT 200000

/* IST slot used by the gates that have one (TSS.IST[IST_INDEX - 1]) */
#define IST_INDEX 1
/* a DPL 3 gate a CPL 3 program uses to say it is done */
#define SYSCALL_VECTOR 0x80

/* GS base a kernel-mode process writes over the kernel's per-CPU base */
#define GS_USER_VALUE 0x00007ffff7ff0000
#define MSR_GS_BASE 0xc0000101
#define MSR_KERNEL_GS_BASE 0xc0000102

/* fault loop: busy-wait iterations between two re-faults, so the QEMU log grows slowly */
#define FAULT_LOOP_DELAY 5000

/* serial console (COM1) */
#define COM1 0x3f8
