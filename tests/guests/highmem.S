/*
 * Memory above 4 GiB: maps guest-physical 4 GiB..4 GiB+16 MiB at the same virtual address
 * (PDPT slot 4), writes a pattern at several places, reads it back.
 */
    .include "macros.S"
    .globl _start
    .text
_start:
    mov %cr3, %rax
    and $~0xfff, %rax
    mov (%rax), %rbx            /* PML4[0] -> PDPT */
    and $~0xfff, %rbx
    mov $0x30000, %rdi          /* a free page for the new page directory */
    lea 3(%rdi), %rax
    mov %rax, 32(%rbx)          /* PDPT[4] = PD | present | writable */
    mov $8, %ecx
    movabs $0x100000083, %rax   /* 4 GiB | 2 MiB page | present | writable */
1:  mov %rax, (%rdi)
    add $8, %rdi
    add $0x200000, %rax
    dec %ecx
    jnz 1b
    mov %cr3, %rax
    mov %rax, %cr3              /* flush the TLB */

    movabs $0x100000000, %rdi
    movabs $0x5649524545484947, %rax  /* "GIHEERIV" */
    mov %rax, (%rdi)
    mov %rax, 0x7ffff8(%rdi)
    mov %rax, 0xfffff8(%rdi)
    mov (%rdi), %rbx
    cmp %rax, %rbx
    jne bad
    mov 0xfffff8(%rdi), %rbx
    cmp %rax, %rbx
    jne bad
    PUTS "highmem: ok "
    mov (%rdi), %rax
    call put_hex
    PUTS "\n"
    call poweroff
bad:
    PUTS "highmem: mismatch\n"
    call poweroff

    .include "lib.S"
