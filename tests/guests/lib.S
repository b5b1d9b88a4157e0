/*
 * Shared routines of the test guests. Every test guest is an ELF64 entered by vireo-vmm in
 * 64-bit mode on its boot identity map (first 4 GiB, 2 MiB pages) with RSP = 0x8ff0, and
 * talks to the host only through COM1 (port 0x3f8) and the ACPI power registers (0x600).
 */
    .code64

/* puts: writes the NUL-terminated string at RSI to COM1. */
puts:
    push %rax
    push %rdx
    mov $0x3f8, %dx
1:  lodsb
    test %al, %al
    jz 2f
    outb %al, %dx
    jmp 1b
2:  pop %rdx
    pop %rax
    ret

/* put_dec: writes EAX in decimal. */
put_dec:
    push %rax
    push %rbx
    push %rdx
    push %rsi
    sub $16, %rsp
    lea 15(%rsp), %rsi
    movb $0, (%rsi)
    mov $10, %ebx
1:  xor %edx, %edx
    div %ebx
    add $'0', %dl
    dec %rsi
    mov %dl, (%rsi)
    test %eax, %eax
    jnz 1b
    call puts
    add $16, %rsp
    pop %rsi
    pop %rdx
    pop %rbx
    pop %rax
    ret

/* put_hex: writes RAX as 16 hex digits. */
put_hex:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    sub $24, %rsp
    lea 16(%rsp), %rsi
    movb $0, (%rsi)
    mov $16, %ecx
1:  mov %eax, %edx
    and $0xf, %edx
    cmp $10, %edx
    jb 2f
    add $('a' - 10 - '0'), %edx
2:  add $'0', %edx
    dec %rsi
    mov %dl, (%rsi)
    shr $4, %rax
    dec %ecx
    jnz 1b
    call puts
    add $24, %rsp
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    ret

/* poweroff: ACPI S5 (SLP_TYP=5, SLP_EN) through the sleep control register. */
poweroff:
    mov $0x600, %dx
    mov $0x34, %al
    outb %al, %dx
halt_forever:
    hlt
    jmp halt_forever
