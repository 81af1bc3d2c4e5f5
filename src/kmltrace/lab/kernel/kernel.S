/*
 * kmltrace lab kernel: a freestanding x86-64 multiboot kernel that does what Kernel Mode Linux
 * does to a CPU -- it runs code at CPL 0 on a user-range stack -- with IDT gates set up with or
 * without IST, so that each scenario reproduces one failure mode on a real (emulated or
 * virtualized) CPU.  Built once per scenario with -DSCENARIO=SC_... (see lab.h).
 *
 * It reports on COM1 and ends with "KMLTRACE-LAB: END" followed by cli; hlt, so that the runner
 * can still take a memory dump (isa-debug-exit would end QEMU before the dump).
 */
#include "lab.h"

#define MB_MAGIC 0x1badb002
/* bit 16: the a.out-kludge address fields are valid; QEMU refuses an ELF64 image without them */
#define MB_FLAGS 0x00010000

#define PTE_P 0x1
#define PTE_W 0x2
#define PTE_U 0x4
#define PTE_PCD 0x10
#define PTE_PS 0x80
#define PTE_TABLE (PTE_P | PTE_W | PTE_U)

#define GATE_INTR 0x8e          /* present, DPL 0, 64-bit interrupt gate */
#define GATE_INTR_DPL3 0xee     /* present, DPL 3 */

#define LAPIC_EOI 0xb0
#define LAPIC_SVR 0xf0
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_DIV 0x3e0

/* ------------------------------------------------------------------------------------------ */
        .section .multiboot, "a"
        .align 4
mb_header:
        .long MB_MAGIC
        .long MB_FLAGS
        .long -(MB_MAGIC + MB_FLAGS)
        .long mb_header         /* header_addr */
        .long _load_start       /* load_addr */
        .long _load_end         /* load_end_addr */
        .long _bss_end          /* bss_end_addr */
        .long _start32          /* entry_addr */

/* ------------------------------------------------------------------------------------------ */
        .section .text
        .code32
        .globl _start32
_start32:
        cli
        mov $boot_stack_top, %esp
        mov $pml4, %eax
        mov %eax, %cr3
        mov %cr4, %eax
        or $0x20, %eax                  /* PAE */
        mov %eax, %cr4
        mov $0xc0000080, %ecx           /* EFER.LME */
        rdmsr
        or $0x100, %eax
        wrmsr
        mov %cr0, %eax
        or $0x80000001, %eax            /* PG | PE */
        mov %eax, %cr0
        lgdt gdt_ptr
        ljmp $KERNEL_CS, $_start64

        .code64
_start64:
        mov $KERNEL_DS, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        xor %eax, %eax
        mov %ax, %fs
        mov %ax, %gs
        lea kernel_stack_top(%rip), %rsp
        call serial_init
        call tss_init
        call idt_init
        lea msg_boot(%rip), %rsi
        call puts
        lea scenario_name(%rip), %rsi
        call puts
        call newline
        jmp scenario

/* ---- serial ------------------------------------------------------------------------------ */
serial_init:
        mov $COM1 + 1, %dx
        xor %al, %al
        out %al, %dx                    /* no interrupts */
        mov $COM1 + 3, %dx
        mov $0x80, %al
        out %al, %dx                    /* DLAB */
        mov $COM1, %dx
        mov $1, %al
        out %al, %dx                    /* 115200 baud */
        mov $COM1 + 1, %dx
        xor %al, %al
        out %al, %dx
        mov $COM1 + 3, %dx
        mov $3, %al
        out %al, %dx                    /* 8N1 */
        ret

/* putc(%al): clobbers %dx */
putc:
        push %rax
        mov $COM1 + 5, %dx
1:      in %dx, %al
        test $0x20, %al
        jz 1b
        pop %rax
        mov $COM1, %dx
        out %al, %dx
        ret

newline:
        push %rax
        push %rdx
        mov $'\n', %al
        call putc
        pop %rdx
        pop %rax
        ret

/* puts(%rsi = NUL-terminated string) */
puts:
        push %rax
        push %rdx
        push %rsi
1:      lodsb
        test %al, %al
        jz 2f
        call putc
        jmp 1b
2:      pop %rsi
        pop %rdx
        pop %rax
        ret

/* puthex(%rdi): "0x" and 16 hex digits */
puthex:
        push %rax
        push %rcx
        push %rdx
        push %rdi
        mov $'0', %al
        call putc
        mov $'x', %al
        call putc
        mov $16, %ecx
1:      rol $4, %rdi
        mov %edi, %eax
        and $0xf, %eax
        cmp $10, %al
        jb 2f
        add $('a' - '0' - 10), %al
2:      add $'0', %al
        call putc
        dec %ecx
        jnz 1b
        pop %rdi
        pop %rdx
        pop %rcx
        pop %rax
        ret

/* say(%rsi = label, %rdi = value): "label0x...." */
say:
        call puts
        call puthex
        ret

/* the end of every scenario: a marker the runner waits for, then a CPU that stays put */
        .globl lab_end
lab_end:
        lea msg_end(%rip), %rsi
        call puts
1:      cli
        hlt
        jmp 1b

/* ---- TSS and IDT -------------------------------------------------------------------------- */
tss_init:
        lea tss(%rip), %rax
        lea kernel_stack_top(%rip), %rcx
        mov %rcx, 4(%rax)               /* RSP0: the stack a CPL 3 -> 0 delivery switches to */
        lea ist_stack_top(%rip), %rcx
        mov %rcx, 36 + 8 * (IST_INDEX - 1)(%rax)
        movw $104, 102(%rax)            /* no I/O bitmap */
        /* the 16-byte TSS descriptor at TSS_SEL */
        lea gdt(%rip), %rdi
        mov %rax, %rcx
        and $0xffff, %ecx
        shl $16, %rcx
        or $103, %rcx                   /* limit */
        mov %rax, %rdx
        shr $16, %rdx
        and $0xff, %edx
        shl $32, %rdx
        or %rdx, %rcx                   /* base 23:16 */
        mov $0x89, %rdx
        shl $40, %rdx
        or %rdx, %rcx                   /* present, 64-bit available TSS */
        mov %rax, %rdx
        shr $24, %rdx
        and $0xff, %edx
        shl $56, %rdx
        or %rdx, %rcx                   /* base 31:24 */
        mov %rcx, TSS_SEL(%rdi)
        mov %rax, %rdx
        shr $32, %rdx
        mov %rdx, TSS_SEL + 8(%rdi)
        lgdt gdt_ptr(%rip)
        mov $TSS_SEL, %ax
        ltr %ax
        ret

/* set_gate(%edi = vector, %rsi = handler, %edx = ist, %ecx = type/attributes) */
set_gate:
        push %rax
        push %rbx
        lea idt(%rip), %rbx
        shl $4, %rdi
        add %rdi, %rbx
        mov %rsi, %rax
        and $0xffff, %eax
        movw %ax, 0(%rbx)
        movw $KERNEL_CS, 2(%rbx)
        movb %dl, 4(%rbx)
        movb %cl, 5(%rbx)
        mov %rsi, %rax
        shr $16, %rax
        movw %ax, 6(%rbx)
        shr $16, %rax
        movl %eax, 8(%rbx)
        movl $0, 12(%rbx)
        pop %rbx
        pop %rax
        ret

/* gate(vector, handler, ist, attributes) */
.macro gate vector, handler, ist, attr
        mov $\vector, %edi
        lea \handler(%rip), %rsi
        mov $\ist, %edx
        mov $\attr, %ecx
        call set_gate
.endm

idt_init:
        /* every vector first goes to a handler that reports it, on the kernel stack */
        xor %r8d, %r8d
1:      mov %r8d, %edi
        lea unexpected(%rip), %rsi
        xor %edx, %edx
        mov $GATE_INTR, %ecx
        call set_gate
        inc %r8d
        cmp $256, %r8d
        jb 1b
#if SCENARIO == SC_STARVATION
        gate 14, pf_handler, 0, GATE_INTR           /* no IST: the #PF frame goes on the faulting stack */
        gate 8, df_handler, 0, GATE_INTR            /* no IST either: nothing can be delivered */
#elif SCENARIO == SC_PF_IST
        gate 14, pf_grow_handler, IST_INDEX, GATE_INTR
        gate 8, df_handler, 0, GATE_INTR
#elif SCENARIO == SC_DF_IST
        gate 14, pf_handler, 0, GATE_INTR
        gate 8, df_handler, IST_INDEX, GATE_INTR    /* as mainline Linux: #DF alone on IST 1 */
#elif SCENARIO == SC_REDZONE_NOIST
        gate TIMER_VECTOR, timer_handler, 0, GATE_INTR
#elif SCENARIO == SC_REDZONE_IST
        gate TIMER_VECTOR, timer_handler, IST_INDEX, GATE_INTR
#elif SCENARIO == SC_CPL3
        gate 14, pf_grow_handler, 0, GATE_INTR      /* from CPL 3 the frame goes on RSP0 */
        gate SYSCALL_VECTOR, user_done, 0, GATE_INTR_DPL3
#elif SCENARIO == SC_GS_WRITE
        gate 3, bp_handler, IST_INDEX, GATE_INTR   /* on IST, as KML does: only the GS write shows */
#elif SCENARIO == SC_FAULT_LOOP
        gate 14, pf_loop_handler, IST_INDEX, GATE_INTR
#endif
        lidt idt_ptr(%rip)
        ret

/* ---- handlers ---------------------------------------------------------------------------- */
/* A handler reached through a gate the scenario did not set: name it and stop. */
unexpected:
        lea msg_unexpected(%rip), %rsi
        mov (%rsp), %rdi
        call say
        call newline
        jmp lab_end

/* #PF that reports what it saw and stops (reached only if the frame could be pushed) */
pf_handler:
        lea msg_pf_cr2(%rip), %rsi
        mov %cr2, %rdi
        call say
        call newline
        jmp lab_end

/* #DF: reports the frame it was given (error code, RIP, RSP) and stops, as Linux panics */
df_handler:
        lea msg_df(%rip), %rsi
        call puts
        lea msg_rip(%rip), %rsi
        mov 8(%rsp), %rdi
        call say
        lea msg_rsp(%rip), %rsi
        mov 32(%rsp), %rdi
        call say
        lea msg_cr2(%rip), %rsi
        mov %cr2, %rdi
        call say
        lea msg_handler_rsp(%rip), %rsi
        mov %rsp, %rdi
        call say
        call newline
        jmp lab_end

/* #PF that grows the stack the way a kernel would: maps the missing page and returns */
pf_grow_handler:
        push %rax
        push %rdx
        push %rsi
        push %rdi
        lea msg_pf_cr2(%rip), %rsi
        mov %cr2, %rdi
        call say
        lea msg_cs(%rip), %rsi
        mov 8 * 4 + 16(%rsp), %rdi
        call say
        lea msg_rsp(%rip), %rsi
        mov 8 * 4 + 32(%rsp), %rdi
        call say
        lea msg_handler_rsp(%rip), %rsi
        mov %rsp, %rdi
        call say
        call newline
        lea spare_page(%rip), %rax
        or $(PTE_P | PTE_W | PTE_U), %rax
        mov %rax, pt_user + 8 * 509(%rip)   /* the guard page's entry */
        mov $GUARD_PAGE, %rax
        invlpg (%rax)
        pop %rdi
        pop %rsi
        pop %rdx
        pop %rax
        add $8, %rsp                         /* the error code */
        iretq

/* #PF on IST whose entry path goes back to the faulting stack and pushes there: it faults
 * again on the same push, forever, and never resets (each fault gets a fresh IST frame). */
pf_loop_handler:
        mov $FAULT_LOOP_DELAY, %ecx
1:      pause
        dec %ecx
        jnz 1b
        mov 32(%rsp), %rsp                   /* the interrupted %rsp */
        .globl loop_push
loop_push:
        push %rax
        jmp lab_end                          /* never reached */

/* the timer: counts ticks, on whatever stack its gate says */
timer_handler:
        push %rax
        push %rdx
        incl ticks(%rip)
        mov $LAPIC_BASE + LAPIC_EOI, %rax
        movl $0, (%rax)
        pop %rdx
        pop %rax
        iretq

/* int3 after the GS write: report the GS base the CPU now has */
bp_handler:
        lea msg_gs(%rip), %rsi
        mov $MSR_GS_BASE, %ecx
        rdmsr
        shl $32, %rdx
        or %rax, %rdx
        mov %rdx, %rdi
        call say
        lea msg_kgs(%rip), %rsi
        lea percpu(%rip), %rdi
        call say
        call newline
        jmp lab_end

/* CPL 3 program done (int $SYSCALL_VECTOR) */
user_done:
        lea msg_user_done(%rip), %rsi
        call puts
        jmp lab_end

/* ---- scenarios --------------------------------------------------------------------------- */
scenario:
#if SCENARIO == SC_STARVATION || SCENARIO == SC_PF_IST || SCENARIO == SC_DF_IST || SCENARIO == SC_FAULT_LOOP
        /* a kernel-mode process whose stack has reached the bottom of its mapped page */
        mov $STARVE_RSP, %rsp
        .globl starve_push
starve_push:
        push %rax                            /* writes STARVE_CR2: not mapped -> #PF at CPL 0 */
        lea msg_pushed(%rip), %rsi
        call puts
        jmp lab_end

#elif SCENARIO == SC_REDZONE_NOIST || SCENARIO == SC_REDZONE_IST
        /* LAPIC on, periodic timer on TIMER_VECTOR; the 8259 masked (its IRQ0 would be vector 8) */
        mov $0xff, %al
        out %al, $0x21
        out %al, $0xa1
        mov $LAPIC_BASE, %rbx
        movl $0x1ff, LAPIC_SVR(%rbx)
        movl $0x3, LAPIC_TIMER_DIV(%rbx)     /* divide by 16 */
        movl $(TIMER_VECTOR | 0x20000), LAPIC_LVT_TIMER(%rbx)
        movl $LAPIC_TIMER_COUNT, LAPIC_TIMER_INIT(%rbx)
        /* code at CPL 0 on a user-range stack keeps data in the red zone below %rsp */
        mov $REDZONE_RSP, %rsp
        mov $0x5a5a5a5a5a5a5a5a, %rax
        mov $(REDZONE_BYTES / 8), %ecx
        lea -REDZONE_BYTES(%rsp), %rdi
        rep stosq
        sti
        .globl redzone_wait
redzone_wait:
        pause
        cmpl $TIMER_TICKS, ticks(%rip)
        jb redzone_wait
        cli
        movl $0x10000, LAPIC_LVT_TIMER(%rbx) /* masked */
        movl $0, LAPIC_TIMER_INIT(%rbx)
        /* the kernel's own check: how many red-zone quadwords changed */
        mov $0x5a5a5a5a5a5a5a5a, %rax
        xor %edx, %edx
        mov $(REDZONE_BYTES / 8), %ecx
        lea -REDZONE_BYTES(%rsp), %rdi
1:      cmp (%rdi), %rax
        je 2f
        inc %edx
2:      add $8, %rdi
        dec %ecx
        jnz 1b
        lea kernel_stack_top(%rip), %rsp
        test %edx, %edx
        jz 3f
        lea msg_clobbered(%rip), %rsi
        mov %rdx, %rdi
        shl $3, %rdi
        call say
        call newline
        jmp lab_end
3:      lea msg_intact(%rip), %rsi
        call puts
        jmp lab_end

#elif SCENARIO == SC_CPL3
        /* the same push, by a CPL 3 program: the #PF goes through RSP0 and is handled */
        push $USER_DS
        mov $STARVE_RSP, %rax
        push %rax
        push $0x2                            /* RFLAGS: interrupts off */
        push $USER_CS
        lea user_program(%rip), %rax
        push %rax
        iretq
        .globl user_program
user_program:
        .globl user_push
user_push:
        push %rax
        int $SYSCALL_VECTOR

#elif SCENARIO == SC_GS_WRITE
        /* the kernel's per-CPU base in both GS MSRs, as KML keeps them */
        lea percpu(%rip), %rax
        mov %rax, %rdx
        shr $32, %rdx
        mov $MSR_GS_BASE, %ecx
        wrmsr
        mov $MSR_KERNEL_GS_BASE, %ecx
        wrmsr
        /* a kernel-mode process writes its GS: a selector load, then the base itself */
        mov $STARVE_RSP + 0x800, %rsp
        xor %eax, %eax
        .globl gs_mov
gs_mov:
        mov %ax, %gs
        mov $7, %eax
        xor %ecx, %ecx
        cpuid
        test $1, %ebx                        /* FSGSBASE */
        jz 1f
        mov %cr4, %rax
        or $0x10000, %rax
        mov %rax, %cr4
        mov $GS_USER_VALUE, %rax
        .globl gs_wrgsbase
gs_wrgsbase:
        wrgsbase %rax
        jmp 2f
1:      lea msg_no_fsgsbase(%rip), %rsi      /* no wrgsbase on this CPU: the MSR instead */
        call puts
        mov $GS_USER_VALUE, %rax
        mov %rax, %rdx
        shr $32, %rdx
        mov $MSR_GS_BASE, %ecx
        wrmsr
2:      int3
#endif
        jmp lab_end

/* ---- data -------------------------------------------------------------------------------- */
        .section .rodata
scenario_name:
#if SCENARIO == SC_STARVATION
        .asciz "starvation"
#elif SCENARIO == SC_PF_IST
        .asciz "pf-ist"
#elif SCENARIO == SC_DF_IST
        .asciz "df-ist"
#elif SCENARIO == SC_REDZONE_NOIST
        .asciz "redzone-noist"
#elif SCENARIO == SC_REDZONE_IST
        .asciz "redzone-ist"
#elif SCENARIO == SC_CPL3
        .asciz "cpl3"
#elif SCENARIO == SC_GS_WRITE
        .asciz "gs-write"
#elif SCENARIO == SC_FAULT_LOOP
        .asciz "fault-loop"
#else
#error "unknown SCENARIO"
#endif
msg_boot:        .asciz "KMLTRACE-LAB: scenario="
msg_end:         .asciz "KMLTRACE-LAB: END\n"
msg_unexpected:  .asciz "lab: unexpected interrupt, top of frame "
msg_pf_cr2:      .asciz "lab: #PF cr2="
msg_cs:          .asciz " cs="
msg_rip:         .asciz " rip="
msg_rsp:         .asciz " rsp="
msg_cr2:         .asciz " cr2="
msg_handler_rsp: .asciz " handler_rsp="
msg_df:          .asciz "lab: #DF delivered"
msg_pushed:      .asciz "lab: push completed on a grown stack\n"
msg_clobbered:   .asciz "lab: redzone CLOBBERED bytes="
msg_intact:      .asciz "lab: redzone intact\n"
msg_gs:          .asciz "lab: gs_base="
msg_kgs:         .asciz " kernel_percpu="
msg_no_fsgsbase: .asciz "lab: no FSGSBASE, writing MSR_GS_BASE\n"
msg_user_done:   .asciz "lab: CPL 3 program done\n"

        .section .data
        .align 16
gdt:
        .quad 0                                  /* null */
        .quad 0x00af9a000000ffff                 /* 0x08 kernel code, 64-bit */
        .quad 0x00cf92000000ffff                 /* 0x10 kernel data */
        .quad 0x00cff2000000ffff                 /* 0x18 user data, DPL 3 */
        .quad 0x00affa000000ffff                 /* 0x20 user code, 64-bit, DPL 3 */
        .quad 0, 0                               /* 0x28 TSS, filled by tss_init */
gdt_end:
gdt_ptr:
        .word gdt_end - gdt - 1
        .quad gdt
idt_ptr:
        .word 256 * 16 - 1
        .quad idt
ticks:  .long 0

        /* page tables: identity map of the first 4 MiB (user-accessible, so a CPL 3 program
         * can run from the kernel image), the LAPIC page, and one page of user-range stack */
        .align 4096
pml4:
        .quad pdpt_low + PTE_TABLE
        .fill 254, 8, 0
        .quad pdpt_user + PTE_TABLE              /* 255: 0x00007f8000000000 */
        .fill 256, 8, 0
pdpt_low:
        .quad pd_low + PTE_TABLE
        .quad 0, 0
        .quad pd_apic + PTE_TABLE                /* 3: 0xc0000000 */
        .fill 508, 8, 0
pd_low:
        .quad 0x000000 + PTE_P + PTE_W + PTE_U + PTE_PS
        .quad 0x200000 + PTE_P + PTE_W + PTE_U + PTE_PS
        .fill 510, 8, 0
pd_apic:
        .fill 503, 8, 0
        .quad LAPIC_BASE + PTE_P + PTE_W + PTE_PCD + PTE_PS   /* 503: 0xfee00000 */
        .fill 8, 8, 0
pdpt_user:
        .fill 511, 8, 0
        .quad pd_user + PTE_TABLE                /* 511: 0x00007fffc0000000 */
pd_user:
        .fill 511, 8, 0
        .quad pt_user + PTE_TABLE                /* 511: 0x00007fffffe00000 */
pt_user:
        .fill 509, 8, 0
        .quad 0                                  /* 509: GUARD_PAGE, not mapped */
        .quad user_stack + PTE_P + PTE_W + PTE_U /* 510: USER_STACK_BOTTOM */
        .quad 0                                  /* 511 */

        .section .bss
        .align 4096
user_stack:     .skip 4096
spare_page:     .skip 4096
percpu:         .skip 4096
        .align 16
idt:            .skip 256 * 16
tss:            .skip 104
        .align 16
boot_stack:     .skip 1024
boot_stack_top:
kernel_stack:   .skip 8192
kernel_stack_top:
ist_stack:      .skip 8192
        .globl ist_stack_top
ist_stack_top:
