/*
 * A guest with state worth keeping, for snapshot and migration tests: fills 256 KiB at
 * 4 MiB with a pattern (each dword is its address XOR 0xa5a5a5a5), then counts forever:
 * each tick increments the counter at 3 MiB, writes it into one of 256 pages at 5 MiB (so
 * that pages keep getting dirty) and prints "tick N"; every 8th tick it checks the pattern
 * and prints "pattern ok" or "pattern BAD". A restored or migrated guest must go on from
 * the next tick with its pattern intact.
 */
    .include "macros.S"
    .globl _start
    .text
_start:
    PUTS "counter: start\n"
    mov $0x400000, %edi
1:  mov %edi, %eax
    xor $0xa5a5a5a5, %eax
    mov %eax, (%rdi)
    add $4, %edi
    cmp $0x440000, %edi
    jb 1b

tick:
    incl 0x300000
    mov 0x300000, %eax
    mov %eax, %ebx
    and $255, %ebx
    shl $12, %ebx
    mov %eax, 0x500000(%rbx)
    PUTS "tick "
    call put_dec
    PUTS "\n"
    test $7, %eax
    jnz delay

    mov $0x400000, %edi
2:  mov %edi, %eax
    xor $0xa5a5a5a5, %eax
    cmp %eax, (%rdi)
    jne bad
    add $4, %edi
    cmp $0x440000, %edi
    jb 2b
    PUTS "pattern ok\n"
    jmp delay
bad:
    PUTS "pattern BAD\n"

delay:
    mov $100000, %ecx
3:  dec %ecx
    jnz 3b
    jmp tick

    .include "lib.S"
